"""DQ-pilot training: example building, GRPO rewards, SFT -> GRPO -> adapter plumbing.

The VLM here is the tiny Qwen2.5-VL of `dlgpr_core.llm.tiny`, built with RANDOM WEIGHTS (no
weights can be downloaded on these machines): its generations are noise, so the training
tests check plumbing only (data -> trl SFTTrainer -> GRPOTrainer -> adapter that the
questioner loads), never what the model learned. The reward tests use a scripted search
function, a plumbing fixture with hand-chosen ranks, not a retriever.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.dq_pilot import (
    DQPilotConfig,
    DQPilotQuestioner,
    ParsedOutput,
    parse_dq_output,
)
from dlgpr_core.dialogue.engine import DialogueEngine
from dlgpr_core.dialogue.metrics import prg, prg_place_rank
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.state import DialogueConfig
from dlgpr_core.dq_training.examples import (
    DQDataConfig,
    DQExample,
    build_examples,
    read_examples,
    write_examples,
)
from dlgpr_core.dq_training.hf_dataset import to_hf_dataset
from dlgpr_core.dq_training.lexical_search import LexicalSearch
from dlgpr_core.dq_training.rewards import RetrievalGainReward, format_ok, format_reward
from dlgpr_core.evaluation.oracle import oracle_source
from dlgpr_core.mapdb.report import ImageHit, PlaceHit
from dlgpr_core.synth.city import generate_city
from dlgpr_core.users.fact import FactUser

REPO = Path(__file__).resolve().parent.parent

DATA_CFG = DQDataConfig(
    dialogue=DialogueConfig(max_rounds=2, top_k=5, search_k=10, confidence=None),
    top_k_images=2,
    image_max_side=64,
    max_regions=2,
)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, PlaceAnnotation]]:
    root = tmp_path_factory.mktemp("dq_train_city")
    generate_city(root, "Dqtown", 10, 1, seed=3, image_size=(64, 48), progress=False)
    places = read_annotations(root / "Annotations" / "Dqtown.jsonl")
    return root, places_by_id(places)


@pytest.fixture(scope="module")
def examples(city: tuple[Path, dict[str, PlaceAnnotation]]) -> list[DQExample]:
    root, by_id = city
    places = sorted(by_id.values(), key=lambda p: p.place_id)
    return build_examples(places, LexicalSearch(places, root), DATA_CFG)


def _train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "train_dq_pilot", REPO / "training" / "train_dq_pilot.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_dq_pilot"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- data


def test_examples_build_and_round_trip(
    examples: list[DQExample], city: tuple[Path, dict[str, PlaceAnnotation]], tmp_path: Path
) -> None:
    _, by_id = city
    assert len(examples) == 10 * 2  # every dialogue asks in rounds 0 and 1
    for ex in examples:
        parsed = parse_dq_output(ex.completion)
        assert isinstance(parsed, ParsedOutput) and parsed.question == ex.teacher_question
        assert format_ok(ex.completion), ex.completion
        assert ex.target in by_id
        assert len(ex.answers) == len(ex.questions) == ex.round
        n_images = sum(c["type"] == "image" for c in ex.prompt[1]["content"])
        assert n_images == len(ex.images) == 2 and all(Path(p).exists() for p in ex.images)
        think = ex.completion.split("</think>")[0]
        assert all(f"{i}." in think for i in (1, 2, 3, 4))
    path = tmp_path / "ex.jsonl"
    assert write_examples(path, examples) == len(examples)
    assert read_examples(path) == examples
    ds = to_hf_dataset(examples[:3], image_max_side=64)
    assert {"prompt", "images", "completion", "target", "d0", "answers"} <= set(ds.column_names)
    row = ds[0]
    assert len(row["images"]) == 2 and max(row["images"][0].size) <= 64
    assert row["completion"][0]["role"] == "assistant"
    assert "completion" not in to_hf_dataset(examples[:1], 64, with_completion=False).column_names


def test_training_prompt_equals_inference_prompt(
    examples: list[DQExample], city: tuple[Path, dict[str, PlaceAnnotation]], tmp_path: Path
) -> None:
    root, by_id = city
    places = sorted(by_id.values(), key=lambda p: p.place_id)
    search = LexicalSearch(places, root)
    # The questioner exactly as it runs at inference (backend never called by `prompt`).
    oracle = oracle_source(places)  # what build_examples shows without a map's evidence
    questioner = DQPilotQuestioner(DATA_CFG.prompt_config(), backend=_NoBackend(), evidence=oracle)
    engine = DialogueEngine(search, InfoGainQuestioner(oracle, top_k=5), DATA_CFG.dialogue)
    stored = {ex.example_id: ex for ex in read_examples(_written(tmp_path, examples))}
    checked = 0
    for place in places[:3]:
        target = namespaced_place_id(place.city, place.place_id)
        did = f"{place.city}:{place.place_id}"
        result = engine.run(place.caption, FactUser(place), target, dialogue_id=did)
        for state in result.states:
            if state.pending_question is None:
                continue
            messages, images = questioner.prompt(state)
            ex = stored[f"{did}:r{state.round}"]
            assert ex.prompt == messages
            assert len(ex.images) == len(images)
            assert [i.size for i in images] == [
                im.size for im in to_hf_dataset([ex], DATA_CFG.image_max_side)[0]["images"]
            ]
            checked += 1
    assert checked == 6


def _written(tmp_path: Path, examples: list[DQExample]) -> Path:
    path = tmp_path / "examples.jsonl"
    write_examples(path, examples)
    return path


class _NoBackend:
    def generate(self, *args: Any, **kwargs: Any) -> list[str]:
        raise AssertionError("prompt() must not generate")


# ---------------------------------------------------------------- rewards


def test_format_reward_values() -> None:
    good = "<think>a</think><question>Is there a bank?</question>"
    conv = [{"role": "assistant", "content": good}]
    cases = [
        good,
        conv,
        "<question>Is there a bank?</question><think>a</think>",  # wrong order
        "<think>a</think><think>b</think><question>Is there a bank?</question>",  # two thinks
        "<think>a</think><question> </question>",  # empty
        "<think>a</think><question>Is it red? Is it big?</question>",  # two questions
        "Is there a bank?",
    ]
    assert format_reward(cases) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def _scripted_search(
    target: str, others: list[str], rank_of: Callable[[str], int]
) -> Callable[[str, int], list[PlaceHit]]:
    """Plumbing fixture: puts `target` at the 1-indexed rank `rank_of(query)`."""

    def search(text: str, k: int) -> list[PlaceHit]:
        order = list(others)
        order.insert(rank_of(text) - 1, target)
        return [
            PlaceHit(i + 1, 1.0 - 0.1 * i, pid, 0.0, 0.0, "", i, "Dqtown", "/")
            for i, pid in enumerate(order[:k])
        ]

    return search


def test_retrieval_gain_reward_hand_computed(city: tuple[Path, dict[str, PlaceAnnotation]]) -> None:
    _, by_id = city
    target = sorted(by_id)[0]
    place = by_id[target]
    present = sorted({e.category for e in place.elements} - {"street"})[0]
    absent = next(
        c
        for c in ("fountain", "statue", "phone booth", "bench", "church", "bank")
        if c not in {e.category for e in place.elements}
    )
    user = FactUser(place)
    assert user.answer(f"Is there a {present}?").startswith("Yes")
    art = "an" if absent[0] in "aeiou" else "a"
    assert user.answer(f"Is there {art} {absent}?").startswith("No")

    d0 = "A street."

    def rank_of(text: str) -> int:
        # before any answer: rank 4; an appended "Yes" answer lifts the target to 2, a "No"
        # answer leaves it, "I don't know." pushes it to 5.
        if "Yes" in text:
            return 2
        if "I don't know" in text:
            return 5
        return 4

    others = [pid for pid in sorted(by_id) if pid != target][:5]
    reward = RetrievalGainReward(by_id, _scripted_search(target, others, rank_of), search_k=6)
    c = [1 / math.log2(r + 1) for r in range(7)[1:]]  # c[r-1] = 1/log2(r+1)
    up = (c[1] - c[3]) / (1 - c[3])  # rank 4 -> 2: (0.6309 - 0.4307) / 0.5693 = 0.3517
    down = (c[4] - c[3]) / (1 - c[3])  # rank 4 -> 5: -0.0770
    assert up == pytest.approx(0.351739, abs=1e-6) and down == pytest.approx(-0.076975, abs=1e-6)
    completions = [
        f"<think>x</think><question>Is there a {present}?</question>",
        f"<think>x</think><question>Is there {art} {absent}?</question>",
        "<think>x</think><question>What is the name of the street?</question>",
        f"<question>Is there a {present}?</question>",  # no think: format 0, reward 0
        f"<think>x</think><question>Is there a {present}?</question>",  # asked before: 0
    ]
    n = len(completions)
    out = reward(
        completions,
        target=[target] * n,
        d0=[d0] * n,
        questions=[[]] * 4 + [[f"Is there a {present}?"]],
        answers=[[]] * 4 + [["Maybe."]],
    )
    assert user.answer("What is the name of the street?") == "I don't know."
    assert out == pytest.approx([up, 0.0, down, 0.0, 0.0], abs=1e-9)
    # the "before" query of the four first completions was searched once (cache)
    assert (d0, target) in reward._cache


def _image_hit(rank: int, place_id: str) -> ImageHit:
    return ImageHit(
        rank, 1.0 - 0.01 * rank, rank, "", place_id, 0.0, 0.0, None, None, "Dqtown", "/"
    )


def test_retrieval_gain_reward_sums_over_every_image_of_the_target(
    city: tuple[Path, dict[str, PlaceAnnotation]],
) -> None:
    """R_prg from an image search (Eq. 2): the target's 3 images among 12, scripted.

    Before (no answer): images at [2, 5, 9]; after a "Yes": [1, 3, 4]; after "I don't know.":
    [3, 6, 10].  G_prev = c(2)+c(5)+c(9) = 1.318813, G* = c(1)+c(2)+c(3) = 2.130930:
    up = (1 + 0.5 + 0.430677 - 1.318813) / 0.812117 = 0.753419,
    down = (0.5 + 0.356207 + 0.289065 - 1.318813) / 0.812117 = -0.213689.
    """
    _, by_id = city
    target = sorted(by_id)[0]
    place = by_id[target]
    present = sorted({e.category for e in place.elements} - {"street"})[0]

    def positions(text: str) -> list[int]:
        if "Yes" in text:
            return [1, 3, 4]
        if "I don't know" in text:
            return [3, 6, 10]
        return [2, 5, 9]

    def image_search(text: str, k: int) -> list[ImageHit]:
        own = set(positions(text))
        return [_image_hit(r, target if r in own else "Dqtown:other") for r in range(1, 13)][:k]

    def no_place_search(text: str, k: int) -> list[PlaceHit]:
        raise AssertionError("with an image search, R_prg must not use place ranks")

    reward = RetrievalGainReward(
        by_id, no_place_search, search_k=6, image_search=image_search, image_search_k=12
    )
    c = [0.0] + [1 / math.log2(r + 1) for r in range(1, 13)]  # c[r] = 1/log2(r+1)
    g_prev, g_star = c[2] + c[5] + c[9], c[1] + c[2] + c[3]
    up = (c[1] + c[3] + c[4] - g_prev) / (g_star - g_prev)
    down = (c[3] + c[6] + c[10] - g_prev) / (g_star - g_prev)
    assert up == pytest.approx(0.753419, abs=1e-6) and down == pytest.approx(-0.213689, abs=1e-6)
    completions = [
        f"<think>x</think><question>Is there a {present}?</question>",
        "<think>x</think><question>What is the name of the street?</question>",
    ]
    out = reward(
        completions, target=[target] * 2, d0=["A street."] * 2, questions=[[]] * 2, answers=[[]] * 2
    )
    assert out == pytest.approx([up, down], abs=1e-9)
    assert reward.image_ranks("A street.", target) == [2, 5, 9]
    with pytest.raises(ValueError, match="image_search_k"):
        RetrievalGainReward(by_id, no_place_search, 6, image_search=image_search)


def test_teacher_prg_uses_image_ranks_when_an_image_search_is_given(
    examples: list[DQExample], city: tuple[Path, dict[str, PlaceAnnotation]]
) -> None:
    """Every place shown as two images (its place rank r puts them at 2r-1 and 2r): the
    teacher PRG must be Eq. 2 over both images, not the place-rank stand-in."""
    root, by_id = city
    places = sorted(by_id.values(), key=lambda p: p.place_id)
    search = LexicalSearch(places, root)

    def two_images_per_place(text: str, k: int) -> list[ImageHit]:
        hits = [h.place_id for h in search(text, len(places)) for _ in range(2)]
        return [_image_hit(i + 1, pid) for i, pid in enumerate(hits)][:k]

    built = build_examples(
        places, search, DATA_CFG, image_search=two_images_per_place, image_search_k=20
    )
    assert [e.example_id for e in built] == [e.example_id for e in examples]
    differs = 0
    for ex, plain in zip(built, examples, strict=True):
        p, n = ex.prev_rank, ex.next_rank
        assert ex.teacher_prg == pytest.approx(prg([2 * p - 1, 2 * p], [2 * n - 1, 2 * n]))
        assert plain.teacher_prg == pytest.approx(prg_place_rank(p, n))  # no image search
        differs += not math.isclose(ex.teacher_prg, plain.teacher_prg)
    assert differs > 0  # the two definitions really disagree on some rounds


# ---------------------------------------------------------------- SFT -> GRPO -> questioner


def test_sft_then_grpo_produce_a_loadable_adapter(
    city: tuple[Path, dict[str, PlaceAnnotation]], tmp_path: Path, single_thread: None
) -> None:
    # Random-weight tiny model: 2 SFT steps and 2 GRPO steps on CPU; outputs are noise.
    root, by_id = city
    mod = _train_module()
    cfg = mod.DQTrainConfig.from_yaml(
        REPO / "training" / "configs" / "dq_pilot_tiny.yaml",
        [
            f"model=tiny:{tmp_path / 'model'}",
            f"out_dir={tmp_path / 'run'}",
            f"data.data_root={root}",
            "data.max_places=2",
            "sft.batch_size=1",
            "grpo.batch_size=2",
            "grpo.num_generations=2",
            "grpo.max_completion_length=8",
        ],
    )
    produced = mod.train(cfg)
    for stage in ("sft", "grpo"):
        adapter = Path(produced[stage])
        assert (adapter / "adapter_config.json").exists()
        assert (adapter / "adapter_model.safetensors").exists()
    history = (Path(produced["grpo"]) / "log_history.json").read_text()
    assert "rewards/retrieval_gain/mean" in history and "rewards/format_reward/mean" in history
    for stage in ("sft", "grpo"):  # both stages checkpoint (save_steps: 2 in the tiny config)
        saved = sorted(p.name for p in mod.checkpoint_dir(cfg, stage).glob("checkpoint-*"))
        assert saved == ["checkpoint-2"], (stage, saved)

    pcfg = cfg.data_config().prompt_config(model=str(tmp_path / "model"), adapter=produced["grpo"])
    q = DQPilotQuestioner(
        DQPilotConfig(**{**pcfg.__dict__, "device": "cpu", "max_new_tokens": 8}),
        evidence=oracle_source(list(by_id.values())),
    )
    assert q.name == "dq-pilot"
    places = sorted(by_id.values(), key=lambda p: p.place_id)
    engine = DialogueEngine(
        LexicalSearch(places, root), q, DialogueConfig(max_rounds=1, top_k=2, confidence=None)
    )
    state = engine.start(places[0].caption, "e2e")
    assert state.pending_question is not None  # model output or its fallback
    assert q.stats.asked == 1 and q.stats.generate_calls >= 1


def _tiny_cfg(mod: ModuleType, root: Path, tmp_path: Path, *more: str) -> Any:
    return mod.DQTrainConfig.from_yaml(
        REPO / "training" / "configs" / "dq_pilot_tiny.yaml",
        [
            f"model=tiny:{tmp_path / 'model'}",
            f"out_dir={tmp_path / 'run'}",
            f"data.data_root={root}",
            "data.max_places=2",
            "sft.batch_size=1",
            *more,
        ],
    )


def test_sft_resumes_from_the_newest_whole_checkpoint(
    city: tuple[Path, dict[str, PlaceAnnotation]],
    tmp_path: Path,
    single_thread: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SFT used to save nothing (save_strategy "no"): a crash lost the stage. Now it
    checkpoints, a rerun resumes from the newest whole checkpoint (a torn one, as a crash
    while saving leaves, is passed over and named), and checkpoints none of which loads
    are refused rather than silently trained over from step 0."""
    from dlgpr_core.dq_training.checkpoints import CheckpointError

    root, _ = city
    mod = _train_module()
    cfg = _tiny_cfg(mod, root, tmp_path, "stage=sft", "sft.save_steps=1")
    mod.train(cfg)
    ckpts = mod.checkpoint_dir(cfg, "sft")
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    (ckpts / "checkpoint-2" / "trainer_state.json").unlink()  # the save of step 2 "crashed"
    with caplog.at_level("INFO"):
        produced = mod.train(cfg)
    assert "passing over newer torn checkpoints" in caplog.text
    assert f"resuming from {ckpts / 'checkpoint-1'}" in caplog.text
    steps = [
        h["step"] for h in json.loads((Path(produced["sft"]) / "log_history.json").read_text())
    ]
    assert steps[-1] == 2 and (Path(produced["sft"]) / "adapter_model.safetensors").exists()
    for state in ckpts.glob("checkpoint-*/trainer_state.json"):
        state.write_text("{torn")
    with pytest.raises(CheckpointError, match="none can be resumed from"):
        mod.train(cfg)  # refused before any model loads


def test_resume_point_picks_the_newest_whole_checkpoint(tmp_path: Path) -> None:
    from dlgpr_core.dq_training.checkpoints import CheckpointError, resume_point

    assert resume_point(tmp_path / "none") is None
    for step, state in ((1, {"global_step": 1}), (3, {"global_step": 3}), (5, None), (7, "{")):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            text = state if isinstance(state, str) else json.dumps(state)
            (d / "trainer_state.json").write_text(text)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    assert resume_point(tmp_path) == tmp_path / "checkpoint-3"
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 2}')
    assert resume_point(tmp_path) == tmp_path / "checkpoint-1"
    (tmp_path / "checkpoint-1" / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-7: unreadable .*checkpoint-5: no "):
        resume_point(tmp_path)


def test_examples_cache_is_keyed_by_the_settings_that_built_it(
    city: tuple[Path, dict[str, PlaceAnnotation]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The examples file used to be reused whatever the config (another max_rounds or
    city trained on the old dialogues) and written in place (a crash left a torn file)."""
    from dlgpr_core.config import ConfigError

    root, _ = city
    mod = _train_module()

    def examples(*more: str) -> list[DQExample]:
        cfg = _tiny_cfg(mod, root, tmp_path, *more)
        places = mod.load_places(cfg)
        search, k, _ = mod.make_search(cfg, places)
        return mod.get_examples(cfg, places, search, k)

    two = examples()
    assert {e.round for e in two} == {0, 1}
    built = []
    real_build = mod.build_examples

    def counted(*args: Any, **kwargs: Any) -> list[DQExample]:
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(mod, "build_examples", counted)
    assert examples() == two and built == []  # same settings: reused
    with caplog.at_level("WARNING"):
        three = examples("data.max_rounds=3")
    assert {e.round for e in three} == {0, 1, 2} and built == [1]
    assert "rebuilding" in caplog.text and "data" in caplog.text
    # A crash while writing leaves the previous file whole (and no temporary behind).
    path = tmp_path / "run" / "examples.jsonl"
    before = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            examples("data.max_rounds=2")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if "examples" in p.name) == [
        "examples.jsonl",
        "examples.jsonl.key.json",
    ]
    # A file the user named is never rebuilt behind their back: other settings are refused.
    with pytest.raises(ConfigError, match="built by other settings"):
        examples(f"data.examples={path}", "data.max_rounds=2")


def test_ddi_curriculum_splits_by_difficulty(tmp_path: Path) -> None:
    """SA/DDI on real built examples, then the paper's split: PRG filter, SFT mostly
    low-DDI, GRPO mostly high-DDI, disjoint."""
    from dlgpr_core.dialogue.metrics import DDIConfig
    from dlgpr_core.dq_training.curriculum import curriculum_split, score_difficulty

    root = tmp_path / "data"
    generate_city(root, "Dqtown", 10, 1, seed=3, image_size=(64, 48), progress=False)
    places = read_annotations(root / "Annotations" / "Dqtown.jsonl")
    search = LexicalSearch(places, root)
    examples = build_examples(places, search)
    by_id = places_by_id(places)
    scored = score_difficulty(examples, by_id, search.embed)
    with_ddi = [e for e in scored if e.ddi is not None]
    assert len(with_ddi) >= len(scored) // 2 > 0
    for e in with_ddi:
        assert e.sa is not None
        assert e.ddi == pytest.approx(0.5 * e.sa + 0.5 * (1 - e.teacher_prg))
    threshold = float(np.median([e.ddi for e in with_ddi]))
    cfg = DDIConfig(tau_1=-1.0, threshold=threshold)
    sft, grpo = curriculum_split(scored, cfg, n_sft=6, n_grpo=4, major_share=0.7, seed=0)
    assert len(sft) == 6 and len(grpo) == 4
    assert not {e.example_id for e in sft} & {e.example_id for e in grpo}

    def high(e: DQExample) -> bool:
        return e.ddi is not None and cfg.is_high(e.ddi)

    assert sum(not high(e) for e in sft) >= 4  # round(0.7 * 6) low-DDI when available
    assert sum(high(e) for e in grpo) >= min(3, sum(high(e) for e in scored) - sum(map(high, sft)))
    # The quality filter drops rounds with PRG below tau_1.
    strict = DDIConfig(tau_1=0.5, threshold=threshold)
    s2, g2 = curriculum_split(scored, strict)
    assert all(e.teacher_prg >= 0.5 for e in s2 + g2)
    assert len(s2) + len(g2) == sum(e.teacher_prg >= 0.5 for e in scored)
