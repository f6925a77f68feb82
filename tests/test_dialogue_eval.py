"""Reading answers, the evidence update and the Table 1 evaluation run (log, resume, table,
plot).

`word_search` below is a PLUMBING FIXTURE, not a retriever: it ranks places by word
overlap with their captions (deliberately vague, so the dialogue has work to do). The
numbers these tests compute are checks of bookkeeping, never results.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_dialogue_engine import candidate_questions

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import DONT_KNOW, answer_polarity, probe_of, read_answer
from dlgpr_core.dialogue.engine import SearchFn
from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
from dlgpr_core.dialogue.metrics import bri, cumulative_recall_at_k
from dlgpr_core.dialogue.questioners import InfoGainQuestioner, RandomQuestioner
from dlgpr_core.dialogue.questions import (
    attribute_question,
    free_question,
    presence_question,
)
from dlgpr_core.evaluation.log import DialogueLog, DialogueRecord, SettingsMismatchError
from dlgpr_core.evaluation.oracle import oracle_place_evidence, oracle_source
from dlgpr_core.evaluation.runner import (
    Condition,
    EvalSettings,
    Table1Run,
    evaluate_city,
    questioner_settings,
    run_table1,
)
from dlgpr_core.evaluation.summary import (
    plot_recall,
    summarise_records,
    table_markdown,
    write_table,
)
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_core.synth.city import generate_city
from dlgpr_core.users.fact import FactUser


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> list[PlaceAnnotation]:
    root = tmp_path_factory.mktemp("ev")
    generate_city(root, "Evaltown", 40, 1, seed=11, image_size=(64, 48), progress=False)
    return read_annotations(Path(root) / "Annotations" / "Evaltown.jsonl")


@pytest.fixture(scope="module")
def by_id(places: list[PlaceAnnotation]) -> dict[str, PlaceAnnotation]:
    return places_by_id(places)


def word_search(by_id: dict[str, PlaceAnnotation]) -> SearchFn:
    """Plumbing fixture (module docstring): Jaccard overlap with the caption."""
    docs = {pid: set(re.findall(r"[a-z]+", p.caption.lower())) for pid, p in by_id.items()}

    def search(text: str, k: int) -> list[PlaceHit]:
        q = set(re.findall(r"[a-z]+", text.lower()))
        scored = sorted(
            ((len(q & d) / max(len(q | d), 1), pid) for pid, d in docs.items()),
            key=lambda x: (-x[0], x[1]),
        )[:k]
        return [
            PlaceHit(i + 1, s, pid, 0.0, 0.0, "", 0, "Evaltown", "")
            for i, (s, pid) in enumerate(scored)
        ]

    return search


# --- reading answers and the evidence update ---------------------------------------------


@pytest.mark.parametrize(
    ("answer", "polarity"),
    [
        ("Yes, the bank has a red facade.", "yes"),
        ("yeah there is one", "yes"),
        ("No, there is no fountain.", "no"),
        ("Nope.", "no"),
        (DONT_KNOW, None),
        ("I don't know", None),
        ('The sign of the cafe says "Luna".', None),
        ("", None),
    ],
)
def test_answer_polarity(answer: str, polarity: str | None) -> None:
    assert answer_polarity(answer) == polarity


def test_answers_are_read_as_outcomes_of_their_probe() -> None:
    colour = attribute_question("bank", "colour", "red")
    assert read_answer(colour, "Yes, the bank has a red facade.") == ("yes",)
    assert read_answer(colour, "No, the bank has a brown facade.") == ("no", "brown")
    assert read_answer(colour, "Nope. It's brown, I think.") == ("no", "brown")
    assert read_answer(colour, "No, there is no bank.") == ("absent",)
    assert read_answer(colour, DONT_KNOW) == ("unknown",)
    assert read_answer(colour, "Hmm.") is None
    awning = attribute_question("cafe", "awning")
    assert read_answer(awning, "The awnings are green.") == ("value", "green")
    name = attribute_question("bank", "name")
    assert read_answer(name, 'The sign says "Union Saving".') == ("value", "Union Savings")
    fountain = presence_question("fountain")
    assert read_answer(fountain, "Yes, there is a fountain.") == ("present",)
    assert read_answer(free_question("Is there a fountain?"), "Nope.") == ("absent",)
    assert read_answer(free_question("How does the place feel?"), "No.") is None


def test_every_truthful_answer_leaves_its_own_place_likely(
    places: list[PlaceAnnotation],
) -> None:
    """With exact (oracle) evidence, the update never rules the true place out for a
    truthful answer: its likelihood stays far above the floor."""
    model = AnswerModel()
    checked = 0
    for place in places:
        ev = oracle_place_evidence(place)
        user = FactUser(place)
        for q in candidate_questions([ev]):
            for asked in (q, free_question(q.text)):
                outcome = read_answer(asked, user.answer(asked))
                if outcome is None:
                    continue
                likelihood = model.likelihood(ev, probe_of(asked) or q, outcome)
                assert likelihood is not None, q
                # "I don't know" is weak evidence, but still more likely where the thing is
                bound = 1.5 * model.floor if outcome == ("unknown",) else 5 * model.floor
                assert likelihood > bound, (q, outcome, likelihood)
                checked += 1
    assert checked > 300


def test_evidence_update_applies_bayes_rule(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation]
) -> None:
    ids = sorted(by_id)[:8]
    ranking = [
        PlaceHit(i + 1, 0.9 - 0.01 * i, pid, 0.0, 0.0, "", 0, "Evaltown", "")
        for i, pid in enumerate(ids)
    ]
    evidence = oracle_source(places)
    cat = next(iter(oracle_place_evidence(by_id[ids[0]]).presence))
    q = presence_question(cat)
    update = EvidenceUpdate(evidence, temperature=0.05)
    out = update(ranking, [q], ["No, there is none."])
    floor = AnswerModel().floor
    has = {pid: oracle_place_evidence(by_id[pid]).p(cat) == 1.0 for pid in ids}
    # P("absent" | place) = floor where the oracle sees the thing, 1 where it does not
    delta = {pid: 0.05 * np.log(floor) if has[pid] else 0.0 for pid in ids}
    expected = sorted(ids, key=lambda pid: -(0.9 - 0.01 * ids.index(pid) + delta[pid]))
    assert [h.place_id for h in out] == expected
    assert [h.rank for h in out] == list(range(1, 9))
    got = next(h for h in out if h.place_id == ids[0]).score
    assert got == pytest.approx(0.9 + 0.05 * np.log(floor))
    assert 0 < sum(has.values()) < len(ids), "fixture should mix places with and without it"
    # No questions, or an unreadable answer, leave the ranking as it was.
    assert update(ranking, [], []) == ranking
    assert update(ranking, [q], ["Hmm."]) == ranking
    # Places without evidence are neither helped nor hurt: they get the median likelihood.
    sparse = EvidenceUpdate(oracle_source([by_id[pid] for pid in ids[:4]]), temperature=0.05)
    assert len(sparse(ranking, [q], ["No."])) == 8


# --- the evaluation run -----------------------------------------------------------------


def _run(places, by_id, log, questioner, update, settings):
    evidence = oracle_source(places)

    def make(seed: int, _targets):
        if questioner == "random":
            return RandomQuestioner(evidence, seed=seed)
        return InfoGainQuestioner(evidence)

    condition = Condition(questioner, update, "oracle")
    return list(
        evaluate_city(
            word_search(by_id), len(by_id), places, condition, make, evidence, settings, log
        )
    )


def test_records_are_logged_resumable_and_reproducible(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation], tmp_path: Path
) -> None:
    settings = EvalSettings(n=8, max_rounds=3, confidence=None, seed=3)
    log = DialogueLog(tmp_path / "a" / "dialogues.jsonl")
    first = _run(places, by_id, log, "random", "evidence", settings)
    assert len(first) == 8 and len(log.read()) == 8
    for r in first:
        assert len(r.ranks) == len(r.answers) + 1 == len(r.round_ms) + 1
        assert len(r.question_ms) == len(r.questions) == 3
        assert r.target == r.dialogue_id.rsplit(":", 1)[0]
    # A rerun adds nothing.
    assert _run(places, by_id, log, "random", "evidence", settings) == []
    # An interrupted run (half the log, plus a torn last line) resumes to the same records.
    log2 = DialogueLog(tmp_path / "b" / "dialogues.jsonl")
    log2.path.parent.mkdir()
    lines = log.path.read_text().splitlines()
    log2.path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    resumed = _run(places, by_id, log2, "random", "evidence", settings)
    assert len(resumed) == 4
    strip = [{k: v for k, v in json.loads(x).items() if not k.endswith("_ms")} for x in lines]
    again = [
        {k: v for k, v in json.loads(x).items() if not k.endswith("_ms")}
        for x in log2.path.read_text().splitlines()
        if x.strip().endswith("}")
    ]
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, strip))


def test_resume_refuses_a_log_run_with_other_settings(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation], tmp_path: Path
) -> None:
    """Resuming into a log of other rounds, confidence or seed used to skip every logged
    dialogue (or, for a seed, add a second set averaged into one row). Each is refused,
    naming the setting, and the log loses nothing; the same settings still resume."""
    settings = EvalSettings(n=4, max_rounds=3, confidence=None, seed=3)
    log = DialogueLog(tmp_path / "dialogues.jsonl")
    assert len(_run(places, by_id, log, "random", "evidence", settings)) == 4
    assert {json.dumps(r.settings, sort_keys=True) for r in log.read()} == {
        json.dumps(settings.recorded(), sort_keys=True)
    }
    before = log.path.read_text()
    for changed, named in (
        (replace(settings, max_rounds=2), "rounds 3 (logged) vs 2 (now)"),
        (replace(settings, confidence=0.5), "confidence unset (logged) vs 0.5 (now)"),
        (replace(settings, seed=4), "seed 3 (logged) vs 4 (now)"),
        (replace(settings, top_k=5), f"top_k {settings.top_k} (logged) vs 5 (now)"),
    ):
        with pytest.raises(SettingsMismatchError, match="other settings") as e:
            _run(places, by_id, log, "random", "evidence", changed)
        assert named in str(e.value) and "another --out" in str(e.value)
        assert log.path.read_text() == before
    # Another condition (questioner) in the same log is kept apart, not refused.
    assert len(_run(places, by_id, log, "info-gain", "evidence", replace(settings, seed=4))) == 4
    assert _run(places, by_id, log, "random", "evidence", settings) == []
    # A log written before settings were recorded cannot be checked: refused too.
    legacy = DialogueLog(tmp_path / "legacy.jsonl")
    legacy.path.write_text(
        "\n".join(
            json.dumps({k: v for k, v in json.loads(x).items() if k != "settings"})
            for x in before.splitlines()
        )
        + "\n"
    )
    with pytest.raises(SettingsMismatchError, match="without their settings"):
        _run(places, by_id, legacy, "random", "evidence", settings)
    # Two seeds of one condition are never averaged into one row.
    mixed = log.read() + [replace(r, settings={**r.settings, "seed": 4}) for r in log.read()]
    with pytest.raises(ValueError, match="different settings"):
        summarise_records(mixed, 3)


def test_table1_run_refuses_other_models_before_any_work(tmp_path: Path) -> None:
    """`run_table1` checks the log against --model / --adapter / --llm (for the
    questioners that use them) before building a map or loading a model."""
    data = tmp_path / "data"
    generate_city(data, "Evaltown", 6, 1, seed=11, image_size=(64, 48), progress=False)
    out = tmp_path / "out"
    settings = EvalSettings(n=2, max_rounds=2, confidence=None, seed=0)
    base = {**settings.recorded(), "encoder": "enc", "annotations": "ann"}
    logged = [
        DialogueRecord(
            "Evaltown", name, "evidence", f"Evaltown:{i}:0", f"Evaltown:{i}", "d0", [], [],
            [3], "max_rounds", 0, [], [], "learned", "facts", 0,
            {**base, **questioner_settings(name, {"model": "vlm-A", "adapter": "lora-A",
                                                  "llm": "llm-A"})},
        )
        for name in ("dq-pilot", "plugir")
        for i in range(2)
    ]  # fmt: skip
    log = DialogueLog(out / "dialogues.jsonl")
    for r in logged:
        log.append(r)

    def run(questioner: str, **options: str) -> None:
        run_table1(
            Table1Run(
                data=data, cities=["Evaltown"], questioners=[questioner], updates=["evidence"],
                settings=settings, out=out, model_options=options,
            )
        )  # fmt: skip

    for questioner, options, named in (
        ("dq-pilot", {"model": "vlm-B", "adapter": "lora-A"}, "model 'vlm-A' (logged)"),
        ("dq-pilot", {"model": "vlm-A"}, "adapter 'lora-A' (logged) vs unset (now)"),
        ("plugir", {"llm": "llm-B"}, "llm 'llm-A' (logged) vs 'llm-B' (now)"),
    ):
        with pytest.raises(SettingsMismatchError) as e:
            run(questioner, **options)
        assert named in str(e.value), str(e.value)
    assert not (out / "maps").exists()
    assert log.read() == logged


def test_table_matches_the_logged_ranks(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation], tmp_path: Path
) -> None:
    settings = EvalSettings(n=12, max_rounds=4, confidence=None, seed=0)
    log = DialogueLog(tmp_path / "dialogues.jsonl")
    for qn in ("info-gain", "random"):
        for upd in ("text", "evidence"):
            _run(places, by_id, log, qn, upd, settings)
    records = log.read()
    rows = summarise_records(records, 4)
    assert [(r.questioner, r.update) for r in rows] == [
        ("info-gain", "evidence"),
        ("info-gain", "text"),
        ("random", "evidence"),
        ("random", "text"),
    ]
    for row in rows:
        mine = [r for r in records if (r.questioner, r.update) == (row.questioner, row.update)]
        ranks = np.array([(r.ranks + [r.ranks[-1]] * 5)[:5] for r in mine])
        assert row.bri == pytest.approx(bri(ranks))
        assert row.recall[1] == pytest.approx(list(cumulative_recall_at_k(ranks, (1,))[1]))
        assert row.n == 12 and row.mean_rounds == 4.0
    md = table_markdown(rows)
    assert md.count("\n") == 2 + len(rows) and "| BRI |" in md
    md_path, js_path = write_table(rows, tmp_path / "table", {"seed": 0})
    assert json.loads(js_path.read_text())["rows"][0]["questioner"] == "info-gain"
    assert md_path.read_text() == md
    png = plot_recall(rows, tmp_path / "recall.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


class _CountingInfoGain(InfoGainQuestioner):
    """Info-gain with a batched entry point that counts its calls (stateless, so batching
    must not change a single question)."""

    def __init__(self, evidence: EvidenceSource) -> None:
        super().__init__(evidence)
        self.batches: list[int] = []

    def ask_many(self, states):
        self.batches.append(len(states))
        return [self.ask(s) for s in states]


def test_lockstep_batches_questions_without_changing_results(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation], tmp_path: Path
) -> None:
    def strip(records):
        # Timings differ, and so does the recorded batch size (nothing else may).
        return [
            {k: v for k, v in r.__dict__.items() if not k.endswith("_ms") and k != "settings"}
            | {"settings": {k: v for k, v in r.settings.items() if k != "batch_size"}}
            for r in records
        ]

    results = {}
    made: list[_CountingInfoGain] = []
    evidence = oracle_source(places)

    def make(seed: int, _targets: object) -> _CountingInfoGain:
        made.append(_CountingInfoGain(evidence))
        return made[-1]

    for batch in (1, 4):
        made.clear()
        settings = EvalSettings(n=8, max_rounds=3, confidence=None, seed=5, batch_size=batch)
        log = DialogueLog(tmp_path / f"b{batch}.jsonl")
        results[batch] = list(
            evaluate_city(
                word_search(by_id),
                len(by_id),
                places,
                Condition("info-gain", "evidence", "oracle"),
                make,
                evidence,
                settings,
                log,
            )
        )
        if batch == 4:
            assert len(made) == 2
            # One batched call per question round for each batch of 4 (3 questions each).
            assert [q.batches for q in made] == [[4, 4, 4]] * 2
            assert all(len(r.question_ms) == 3 for r in results[4])
        else:
            assert len(made) == 8 and all(q.batches == [] for q in made)
    assert strip(results[1]) == strip(results[4])
    with pytest.raises(ValueError, match="batch_size"):
        EvalSettings(batch_size=0)


@pytest.mark.slow
def test_dlgpr_eval_command_end_to_end(tmp_path: Path) -> None:
    """The console command on a generated city with the embedded encoder: writes the
    table, the log and the plot, and a rerun resumes (adds no dialogue)."""
    dlgpr = shutil.which("dlgpr")
    assert dlgpr, "the dlgpr console script is not installed: run `make setup`"
    root = tmp_path / "data"
    generate_city(root, "Evalcity", 20, 1, seed=2, image_size=(96, 72), progress=False)
    args = [
        dlgpr, "eval", "--data", str(root), "--cities", "Evalcity", "--n", "4",
        "--rounds", "2", "--questioner", "info-gain", "--questioner", "random",
        "--update", "text,evidence", "--evidence", "oracle", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    lines = (out / "dialogues.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 4
    table = json.loads((out / "table.json").read_text())
    assert {(r["questioner"], r["update"]) for r in table["rows"]} == {
        ("info-gain", "text"),
        ("info-gain", "evidence"),
        ("random", "text"),
        ("random", "evidence"),
    }
    assert (out / "recall.png").stat().st_size > 5000
    assert "| Evalcity | info-gain | evidence | oracle (oracle) |" in (out / "table.md").read_text()
    again = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "dialogues.jsonl").read_text().splitlines() == lines
    bad = subprocess.run(
        [*args[:-6], "--update", "magic", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "--update" in bad.stderr
    # Bad names against the existing output: a clear error, and the log loses nothing.
    for flag, value, words in (
        ("--questioner", "telepathy", "unknown questioner"),
        ("--cities", "Nowhere", "no annotations for Nowhere"),
    ):
        i = args.index(flag)
        wrong = [*args[: i + 1], value, *args[i + 2 :]]
        proc = subprocess.run(wrong, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]
        assert (out / "dialogues.jsonl").read_text().splitlines() == lines
    # Other settings into the same --out: refused, naming them; nothing relabelled.
    for extra, words in ((["--rounds", "1"], "rounds 2"), (["--seed", "1"], "seed 0")):
        i = args.index("--out")
        wrong = [*args[:i], *extra, *args[i:]]
        proc = subprocess.run(wrong, capture_output=True, text=True, timeout=300, check=False)
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and words in message and "--out" in message, message[-2000:]
        assert (out / "dialogues.jsonl").read_text().splitlines() == lines


@pytest.mark.slow
def test_dlgpr_eval_runs_model_backed_questioners(tmp_path: Path) -> None:
    """vlm-zero-shot, dq-pilot (LoRA) and plugir through the real command, on random-weight
    tiny models loaded by path: PLUMBING ONLY, their questions are noise (they fall back),
    and the table must count those fallbacks as failed parses."""
    import peft
    from transformers import AutoModelForImageTextToText

    from dlgpr_core.llm.tiny import build_tiny_causal_lm, build_tiny_qwen2_5_vl

    dlgpr = shutil.which("dlgpr")
    assert dlgpr
    vl = build_tiny_qwen2_5_vl(tmp_path / "vl")
    causal = build_tiny_causal_lm(tmp_path / "causal")
    lora = peft.get_peft_model(
        AutoModelForImageTextToText.from_pretrained(vl),
        peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
    )
    lora.save_pretrained(str(tmp_path / "adapter"))
    root = tmp_path / "data"
    generate_city(root, "Evalcity", 12, 1, seed=2, image_size=(96, 72), progress=False)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            dlgpr, "eval", "--data", str(root), "--cities", "Evalcity", "--n", "2",
            "--rounds", "2", "--evidence", "oracle", "--out", str(out),
            "--questioner", "vlm-zero-shot,dq-pilot,plugir", "--model", str(vl),
            "--adapter", str(tmp_path / "adapter"), "--llm", str(causal),
        ],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["questioner"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert set(rows) == {"vlm-zero-shot", "dq-pilot", "plugir"}
    records = [json.loads(x) for x in (out / "dialogues.jsonl").read_text().splitlines()]
    for name, row in rows.items():
        mine = [r for r in records if r["questioner"] == name]
        assert len(mine) == 2
        assert row["fallbacks"] == sum(r["fallbacks"] for r in mine)
        assert all(len(set(r["questions"])) == len(r["questions"]) for r in mine)


def test_info_gain_never_asks_what_an_answer_settled(
    places: list[PlaceAnnotation], by_id: dict[str, PlaceAnnotation]
) -> None:
    from dlgpr_core.dialogue.answers import settled
    from dlgpr_core.dialogue.engine import DialogueEngine
    from dlgpr_core.dialogue.state import DialogueConfig

    evidence = oracle_source(places)
    engine = DialogueEngine(
        word_search(by_id),
        InfoGainQuestioner(evidence),
        DialogueConfig(max_rounds=6, confidence=None, search_k=len(by_id)),
        reranker=EvidenceUpdate(evidence),
    )
    checked = 0
    for place in places[:15]:
        result = engine.run(place.caption, FactUser(place))
        for state in result.states[1:]:
            q = state.pending_question
            if q is None:
                continue
            done = settled(state.questions, state.answers)
            p = probe_of(q)
            assert p is not None
            assert (p.category, None) not in done and (p.category, p.attribute) not in done
            checked += 1
        absent = [a for a in result.final.answers if "there is no" in a]
        assert all(a.startswith("No") for a in absent)
    assert checked > 20


def test_an_annotator_spec_with_a_model_path_reads_what_it_stored(tmp_path: Path) -> None:
    """`--evidence learned:<run dir>` stores its evidence under the annotator's name
    ("learned"), so the robot must read that name, not the spec: it used to read nothing
    under the spec and ask its questions blind ("Is there a bank?", "...a cafe?", in the
    ontology's order). With a copy of the shipped model as the run directory, the
    dialogues are exactly those of ``learned`` (the shipped model on a tiny generated city:
    plumbing, not a measurement). Resuming a log after that model changed is refused (it
    resumed silently before, mixing two models' dialogues in one row)."""
    data = tmp_path / "data"
    generate_city(data, "Specton", 12, 1, seed=5, image_size=(160, 120), progress=False)
    assets = Path(__file__).resolve().parents[1] / "dlgpr_core" / "assets"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("evidence_lite.json", "evidence_lite_heads.safetensors"):
        shutil.copyfile(assets / name, run_dir / name)
    settings = EvalSettings(n=6, max_rounds=3, confidence=None, seed=0)

    def questions(spec: str, out: Path) -> dict[str, list[str]]:
        run_table1(
            Table1Run(
                data=data, cities=["Specton"], questioners=["info-gain"], updates=["evidence"],
                evidence=[spec], settings=settings, out=out,
            )
        )  # fmt: skip
        return {r.dialogue_id: r.questions for r in DialogueLog(out / "dialogues.jsonl").read()}

    shipped = questions("learned", tmp_path / "a")
    assert questions(f"learned:{run_dir}", tmp_path / "b") == shipped
    asked = [q for qs in shipped.values() for q in qs]
    assert len(set(asked)) > 3, asked  # informed questions differ between targets
    # The same spec after its model changed (here its presence floor): the map is annotated
    # again, so resuming the log would report the old model's dialogues as the new one's.
    # Refused, naming the evidence version; the log loses nothing.
    meta = json.loads((run_dir / "evidence_lite.json").read_text())
    meta["decode"]["presence_floor"] = 0.06
    (run_dir / "evidence_lite.json").write_text(json.dumps(meta))
    log_b = (tmp_path / "b" / "dialogues.jsonl").read_text()
    with pytest.raises(SettingsMismatchError, match="evidence_version"):
        questions(f"learned:{run_dir}", tmp_path / "b")
    assert (tmp_path / "b" / "dialogues.jsonl").read_text() == log_b
    # Two specs of one annotator in one run would share one map's evidence: refused.
    with pytest.raises(ValueError, match="both stored as 'learned'"):
        run_table1(
            Table1Run(
                data=data, cities=["Specton"], questioners=["info-gain"], updates=["evidence"],
                evidence=["learned", f"learned:{run_dir}"], settings=settings,
                out=tmp_path / "d",
            )
        )  # fmt: skip
