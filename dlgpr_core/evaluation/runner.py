"""Simulated interactive benchmark: dialogues against a map, one per chosen target place.

Ranks are taken over the whole map (search k = number of places), because BRI and
Recall@K are defined on the target's rank among all places, not within a short list. Each
dialogue gets its own questioner built from a seed derived from the run seed and the
dialogue's index, so a resumed run gives exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.answers import read_answer
from dlgpr_core.dialogue.engine import DialogueEngine, SearchFn, User
from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
from dlgpr_core.dialogue.questioner import Questioner
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.registry import QUESTIONERS, SEEDED, make_questioner
from dlgpr_core.dialogue.state import DEFAULT_TEMPERATURE, DialogueConfig, DialogueState
from dlgpr_core.evaluation.log import DialogueLog, DialogueRecord, check_settings
from dlgpr_core.evaluation.oracle import ORACLE, OracleQuestioner, write_oracle_evidence
from dlgpr_core.evaluation.summary import TableRow, plot_recall, summarise_records, write_table
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.users.fact import FactUser

Update = Literal["text", "evidence"]
"""How an answer changes the ranking: "text" appends it to the query only (the paper);
"evidence" also re-scores every place by the answer's likelihood under its image evidence."""

QuestionerFactory = Callable[[int, Mapping[str, PlaceAnnotation]], Questioner]
"""(dialogue seed, the targets of the dialogues it will serve, by dialogue id) -> a fresh
questioner; models inside may be shared between calls. Only the oracle reads the targets."""
UserFactory = Callable[[PlaceAnnotation, int], User]
"""(target place, dialogue seed) -> the simulated person standing there."""

USERS = ("facts", "rephrased", "rephrased+asr")
"""The simulated people: exact sentences, a person's words, a person's words misheard."""


@dataclass(frozen=True)
class Condition:
    """One row of Table 1: who asks, how answers update, whose evidence, who answers."""

    questioner: str
    update: Update
    evidence: str
    """Annotator whose evidence the robot uses (``oracle``: ground truth, labelled so)."""
    user: str = "facts"


def _chosen(places: Sequence[PlaceAnnotation], n: int | None, seed: int) -> list[PlaceAnnotation]:
    chosen = sorted(places, key=lambda p: (p.city, p.place_id))
    random.Random(seed).shuffle(chosen)
    return chosen if n is None else chosen[:n]


class _Timed:
    """Wraps a questioner to time each question, per dialogue (a batched call's time is
    shared equally by the questions it produced)."""

    def __init__(self, inner: Questioner) -> None:
        self.inner = inner
        self.name = inner.name
        self.ms: dict[str, list[float]] = {}

    def ask(self, state: DialogueState) -> Question | None:
        t = time.perf_counter()
        q = self.inner.ask(state)
        self.ms.setdefault(state.dialogue_id, []).append(1000 * (time.perf_counter() - t))
        return q

    def ask_many(self, states: Sequence[DialogueState]) -> list[Question | None]:
        inner_many = getattr(self.inner, "ask_many", None)
        if inner_many is None:
            return [self.ask(s) for s in states]
        t = time.perf_counter()
        out: list[Question | None] = list(inner_many(states))
        each = 1000 * (time.perf_counter() - t) / max(len(states), 1)
        for s in states:
            self.ms.setdefault(s.dialogue_id, []).append(each)
        return out


def _lockstep(
    engine: DialogueEngine, d0s: Sequence[str], dids: Sequence[str], users: Sequence[User]
) -> tuple[list[list[DialogueState]], list[list[float]]]:
    """Run dialogues side by side: every round is one `step_many` (one batched question
    call for a batching questioner). Returns each dialogue's states and its per-round wall
    time (a batched round's time shared equally by the dialogues in it)."""
    history = [[s] for s in engine.start_many(d0s, dids)]
    round_ms: list[list[float]] = [[] for _ in d0s]
    while True:
        active = [i for i, h in enumerate(history) if not h[-1].done and h[-1].pending_question]
        if not active:
            return history, round_ms
        answers = []
        for i in active:
            question = history[i][-1].pending_question
            assert question is not None
            answers.append(users[i].answer(question))
        t = time.perf_counter()
        stepped = engine.step_many([history[i][-1] for i in active], answers)
        each = 1000 * (time.perf_counter() - t) / len(active)
        for i, state in zip(active, stepped, strict=True):
            history[i].append(state)
            round_ms[i].append(each)


@dataclass(frozen=True)
class EvalSettings:
    """What one `evaluate_city` run does."""

    n: int | None = 100
    max_rounds: int = 5
    top_k: int = DialogueConfig.top_k
    confidence: float | None = 0.9
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    batch_size: int = 1
    """Dialogues run in lockstep, their questions asked in one batched call per round
    (a VLM on a GPU). Above 1 the dialogues of a batch share one questioner, so keep 1 for
    seeded rule-based questioners whose results must not depend on the batching."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def recorded(self) -> dict[str, Any]:
        """The settings each logged dialogue carries: everything here that changes a
        dialogue, under the command line's names. Not `n`: a larger n extends the same
        seeded choice of targets, a smaller one reports a prefix of it."""
        return {
            "rounds": self.max_rounds,
            "confidence": self.confidence,
            "seed": self.seed,
            "top_k": self.top_k,
            "temperature": self.temperature,
            "batch_size": self.batch_size,
        }


def evaluate_city(
    search: SearchFn,
    map_size: int,
    places: Sequence[PlaceAnnotation],
    condition: Condition,
    make: QuestionerFactory,
    evidence: EvidenceSource,
    settings: EvalSettings,
    log: DialogueLog,
    done: set[tuple[str, ...]] | None = None,
    make_user: UserFactory | None = None,
    on_dialogue: Callable[[DialogueRecord], None] | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> Iterator[DialogueRecord]:
    """Run (or skip, when logged) one dialogue per chosen place; yields each record.

    `search` ranks the map (`map_search` for a real one); `map_size` is its number of
    places, so that ranks are whole-map ranks. Every record carries `settings.recorded()`
    plus `recorded` (the models, the encoder, ...). Without `done` the log is read here and
    refused (`SettingsMismatchError`) when it holds this condition's dialogues run with other
    settings; a caller passing `done` has checked that already (`run_table1` does).
    """
    expected = {**settings.recorded(), **(recorded or {})}
    if done is None:
        records = log.read()
        cities = {p.city for p in places}
        check_settings(
            records,
            lambda r: expected if r.city in cities and _same(r, condition) else None,
            log.path,
        )
        done = {r.key for r in records}
    cfg = DialogueConfig(
        max_rounds=settings.max_rounds,
        top_k=settings.top_k,
        search_k=max(settings.top_k, map_size),
        confidence=settings.confidence,
        temperature=settings.temperature,
    )
    reranker = (
        EvidenceUpdate(evidence, settings.temperature) if condition.update == "evidence" else None
    )
    users = make_user or user_factory(condition.user)
    todo = [
        (i, place, f"{place.city}:{place.place_id}:{settings.seed}")
        for i, place in enumerate(_chosen(places, settings.n, settings.seed))
    ]
    todo = [t for t in todo if _key(t[1].city, condition, t[2]) not in done]
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        seed = settings.seed * 1_000_003 + chunk[0][0]
        timed = _Timed(make(seed, {did: p for _, p, did in chunk}))
        engine = DialogueEngine(search, timed, cfg, reranker=reranker)
        histories, round_ms = _lockstep(
            engine,
            [p.caption for _, p, _ in chunk],
            [did for _, _, did in chunk],
            [users(p, settings.seed * 1_000_003 + i) for i, p, _ in chunk],
        )
        for (_, place, did), states, ms in zip(chunk, histories, round_ms, strict=True):
            record = _record(place, did, condition, states, timed.ms.get(did, []), ms, expected)
            log.append(record)
            done.add(record.key)
            if on_dialogue is not None:
                on_dialogue(record)
            yield record


def _key(city: str, c: Condition, dialogue_id: str) -> tuple[str, ...]:
    return (city, c.questioner, c.update, c.evidence, c.user, dialogue_id)


def _same(r: DialogueRecord, c: Condition) -> bool:
    """The record is one of condition `c`'s dialogues (in any city)."""
    return (r.questioner, r.update, r.evidence, r.user) == (
        c.questioner,
        c.update,
        c.evidence,
        c.user,
    )


def _record(
    place: PlaceAnnotation,
    did: str,
    c: Condition,
    states: Sequence[DialogueState],
    question_ms: Sequence[float],
    round_ms: Sequence[float],
    settings: Mapping[str, Any],
) -> DialogueRecord:
    state = states[-1]
    target = namespaced_place_id(place.city, place.place_id)
    pairs = zip(state.questions, state.answers, strict=False)
    return DialogueRecord(
        city=place.city,
        questioner=c.questioner,
        update=c.update,
        evidence=c.evidence,
        user=c.user,
        dialogue_id=did,
        target=target,
        d0=place.caption,
        questions=[q.text for q in state.questions],
        answers=list(state.answers),
        ranks=[s.rank_of(target) for s in states],
        stop_reason=state.stop_reason or "",
        fallbacks=sum(q.fallback for q in state.questions),
        unread=sum(read_answer(q, a) is None for q, a in pairs),
        question_ms=[round(x, 3) for x in question_ms],
        round_ms=[round(x, 3) for x in round_ms],
        settings=dict(settings),
    )


def user_factory(kind: str) -> UserFactory:
    """The simulated person of a `USERS` kind, or ``llm:<chat model spec>``."""
    if kind == "facts":
        return lambda place, _seed: FactUser(place)
    if kind in ("rephrased", "rephrased+asr"):
        from dlgpr_core.users.rephrased import RephrasedUser

        rate = 0.08 if kind == "rephrased+asr" else 0.0
        return lambda place, seed: RephrasedUser(place, seed=seed, asr_rate=rate)
    if kind.startswith("llm:"):
        from dlgpr_core.llm.chat import create_chat_model
        from dlgpr_core.users.llm import LLMUser

        chat = create_chat_model(kind[4:])
        return lambda place, _seed: LLMUser(place, chat)
    raise ValueError(f"unknown user {kind!r}; use one of {USERS} or llm:<model spec>")


# --- the whole Table 1 run ---------------------------------------------------------------


def questioner_factories(
    names: Sequence[str],
    evidence: EvidenceSource,
    options: Mapping[str, str],
    search: SearchFn,
) -> dict[str, tuple[QuestionerFactory, SearchFn]]:
    """name -> (questioner factory, the search its dialogues use). Seeded questioners are
    built per dialogue, the oracle per batch of targets; model-backed ones load their model
    once. PlugIR retrieves with its reformulated query."""
    out: dict[str, tuple[QuestionerFactory, SearchFn]] = {}
    for name in names:
        if name == ORACLE:
            out[name] = ((lambda _seed, targets: OracleQuestioner(evidence, targets)), search)
            continue
        if name not in QUESTIONERS:
            known = sorted([*QUESTIONERS, ORACLE])
            raise ValueError(f"unknown questioner {name!r}; known: {known}")
        # One run compares the adapter with the bare model: the baseline drops it.
        opts = {k: v for k, v in options.items() if name == "dq-pilot" or k != "adapter"}
        if name in SEEDED:

            def seeded(seed: int, _targets: object, name: str = name) -> Questioner:
                return make_questioner(name, evidence=evidence, seed=seed, search=search)

            out[name] = (seeded, search)
            continue
        shared = make_questioner(
            name,
            evidence=evidence,
            search=search,
            model=opts.get("model"),
            adapter=opts.get("adapter"),
            llm=opts.get("llm"),
        )
        wrapped = search
        if name == "plugir":
            from dlgpr_core.dialogue.plugir import PlugIRQuestioner, PlugIRSearch

            assert isinstance(shared, PlugIRQuestioner)
            wrapped = PlugIRSearch(search, shared)
        out[name] = (_shared(shared), wrapped)
    return out


MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "dq-pilot": ("model", "adapter"),
    "vlm-zero-shot": ("model",),
    "plugir": ("llm",),
}
"""The model options each questioner uses (`questioner_factories` passes the others on
unused): they are part of its dialogues' recorded settings, and only of its."""


def questioner_settings(name: str, options: Mapping[str, str]) -> dict[str, str | None]:
    """The model options questioner `name` runs with (None: its default)."""
    return {k: options.get(k) for k in MODEL_OPTIONS.get(name, ())}


def file_digest(path: Path) -> str:
    """A short content hash: the annotations a city's dialogues were drawn from (another
    --data with the same city names must not resume into the same log)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _shared(questioner: Questioner) -> QuestionerFactory:
    """One questioner for every dialogue (a model loaded once)."""
    return lambda _seed, _targets: questioner


@dataclass(frozen=True)
class Table1Run:
    """One `dlgpr eval` invocation: cities, and every combination of the conditions."""

    data: Path
    cities: Sequence[str]
    questioners: Sequence[str]
    updates: Sequence[Update]
    settings: EvalSettings
    out: Path
    evidence: Sequence[str] = ("learned",)
    """Annotators whose evidence the robot uses, each a row (``oracle`` labelled so)."""
    users: Sequence[str] = ("facts",)
    maps: Path | None = None
    """Folder of per-city maps (default <out>/maps), built and annotated on first use."""
    encoder: str | None = None
    model_options: Mapping[str, str] = field(default_factory=dict)
    """model / adapter / llm for the model-backed questioners."""

    def conditions(self) -> list[Condition]:
        return [
            Condition(q, u, e, who)
            for q in self.questioners
            for u in self.updates
            for e in self.evidence
            for who in self.users
        ]


def run_table1(
    run: Table1Run,
    on_dialogue: Callable[[], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[list[TableRow], dict[str, Any]]:
    """Run (or resume) every dialogue of `run`, write table.md/json, dialogues.jsonl and
    recall.png under `run.out`, and return the table rows and the run's settings.
    `on_dialogue` is called once per dialogue (done or skipped): a progress bar."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.data.annotations import read_annotations
    from dlgpr_core.dialogue.engine import map_search
    from dlgpr_core.evidence.registry import make_annotator
    from dlgpr_core.mapdb.access import open_or_create_map

    log = DialogueLog(run.out / "dialogues.jsonl")
    logged = log.read()
    conditions = run.conditions()
    wanted = {_key(city, c, "")[:-1] for city in run.cities for c in conditions}
    base = run.settings.recorded()

    def expected(
        extra: Mapping[str, Any], versions: Mapping[str, str] | None = None
    ) -> Callable[[DialogueRecord], dict[str, Any] | None]:
        """The settings a logged record of this run must have; `versions`: the evidence
        model of each non-oracle evidence spec, once its annotator is built."""

        def of(r: DialogueRecord) -> dict[str, Any] | None:
            if r.key[:-1] not in wanted:
                return None  # another run's conditions: left alone
            version = versions.get(r.evidence) if versions is not None else None
            model = {"evidence_version": version} if version is not None else {}
            return {
                **base,
                **questioner_settings(r.questioner, run.model_options),
                **extra,
                **model,
            }

        return of

    # Before any map is built or model loaded; the encoder and the annotations are
    # compared per city once known.
    check_settings(logged, expected({}), log.path, only_given=True)
    done = {r.key for r in logged}
    for key in done:
        if key[:-1] in wanted and on_dialogue is not None:
            on_dialogue()
    encoder_name = run.encoder
    chosen: set[tuple[str, str]] = set()
    for city in run.cities:
        ann = run.data / "Annotations" / f"{city}.jsonl"
        if not ann.exists():
            raise FileNotFoundError(f"no annotations for {city}: expected {ann}")
        places = read_annotations(ann)
        chosen |= {
            (p.city, f"{p.city}:{p.place_id}:{run.settings.seed}")
            for p in _chosen(places, run.settings.n, run.settings.seed)
        }
        db, enc = open_or_create_map((run.maps or run.out / "maps") / city, run.encoder)
        per_city = {"encoder": enc.fingerprint, "annotations": file_digest(ann)}
        in_city = [r for r in logged if r.city == city]
        check_settings(in_city, expected(per_city), log.path, only_given=True)
        report = db.build(scan_dataset(run.data, fmt="gsv", cities=[city]), enc, progress=False)
        if report.added and say is not None:
            say(f"map of {city}: {report.render()}")
        encoder_name = db.encoder_spec().get("name") or encoder_name
        # A spec names how to build the annotator ("learned:<run dir>"); the map keeps its
        # evidence under the annotator's name ("learned"), which is what the robot reads.
        stored: dict[str, str] = {}
        versions: dict[str, str] = {}
        for name in run.evidence:
            if name == ORACLE:
                write_oracle_evidence(db, places)
                stored[name] = ORACLE
            else:
                annotator = make_annotator(name, encoder=enc)
                clash = [s for s, n in stored.items() if n == annotator.name]
                if clash:
                    raise ValueError(
                        f"evidence {name!r} and {clash[0]!r} are both stored as "
                        f"{annotator.name!r} in a map: evaluate them in separate runs "
                        "with separate --maps"
                    )
                stored[name] = annotator.name
                versions[name] = annotator.version
                done_report = db.annotate(annotator, progress=False)
                if done_report.annotated and say is not None:
                    say(f"map of {city}: {done_report.render()}")
        # A log resumes only dialogues of the same evidence model: the map re-annotates
        # with a new one, and dialogues of the old would be reported as the new one's.
        check_settings(in_city, expected(per_city, versions), log.path)
        for name in run.evidence:
            source = EvidenceSource.of_map(db.evidence, stored[name])
            factories = questioner_factories(
                run.questioners, source, run.model_options, map_search(db, enc)
            )
            for c in (c for c in conditions if c.evidence == name):
                make, search = factories[c.questioner]
                extra = {**questioner_settings(c.questioner, run.model_options), **per_city}
                if name in versions:
                    extra["evidence_version"] = versions[name]
                for _ in evaluate_city(
                    search,
                    db.info().n_places,
                    places,
                    c,
                    make,
                    source,
                    run.settings,
                    log,
                    done,
                    recorded=extra,
                ):
                    if on_dialogue is not None:
                        on_dialogue()
    # This run's dialogues only: a smaller --n reports its own prefix of the targets.
    records = [r for r in log.read() if r.key[:-1] in wanted and (r.city, r.dialogue_id) in chosen]
    rows = summarise_records(records, run.settings.max_rounds)
    meta = {
        "data": str(run.data),
        "cities": list(run.cities),
        "n": run.settings.n,
        "rounds": run.settings.max_rounds,
        "confidence": run.settings.confidence,
        "seed": run.settings.seed,
        "encoder": encoder_name or "dlgpr-lite",
        "evidence": list(run.evidence),
        "users": list(run.users),
        "d0": "caption",
    }
    write_table(rows, run.out / "table", meta)
    plot_recall(rows, run.out / "recall.png")
    return rows, meta
