"""DQ-pilot questioner: output parser, prompt, retry/fallback bookkeeping, VLM backend, LoRA.

The tiny Qwen2.5-VL used here is built from a config with RANDOM WEIGHTS (no weights can be
downloaded on these machines): its output is noise, so only the plumbing is under test
(chat template with several images, processor, batched generate, adapter loading, parse ->
retry -> fallback). Nothing here measures question quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.dialogue.dq_pilot import (
    DQ_PILOT_INSTRUCTION,
    GENERIC_QUESTIONS,
    DQPilotConfig,
    DQPilotQuestioner,
    ParsedOutput,
    ParseFailure,
    parse_dq_output,
)
from dlgpr_core.dialogue.engine import DialogueEngine
from dlgpr_core.dialogue.questions import free_question, presence_question
from dlgpr_core.dialogue.state import DialogueConfig, DialogueState
from dlgpr_core.evaluation.oracle import oracle_place_evidence, oracle_source
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_core.synth.city import generate_city
from dlgpr_core.users.fact import FactUser

GOOD = "<think>Candidates 1 and 2 differ by the bank.</think><question>Is there a bank?</question>"


# ---------------------------------------------------------------- (a) parser


def test_parser_accepts_good_output() -> None:
    out = parse_dq_output("  " + GOOD + "\n")
    assert out == ParsedOutput(
        think="Candidates 1 and 2 differ by the bank.", question="Is there a bank?"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Is there a bank?", "missing_tag"),
        ("<think>x</think> Is there a bank?", "missing_tag"),
        ("<think>x</think><question>Is there a bank?", "missing_tag"),
        ("<question>Is there a bank?</question>", "missing_tag"),  # no <think>
        ("<think>x</think><question>  </question>", "empty_question"),
        ("<think>x</think><question> ? </question>", "empty_question"),
        (
            "<think>x</think><question>Is there a bank?</question><question>A cafe?</question>",
            "several_questions",
        ),
        ("<think>x</think><question>Is there a bank? Is it red?</question>", "several_questions"),
        ("<think>x</think><question>" + "very " * 45 + "red?</question>", "too_long"),
    ],
)
def test_parser_failure_reasons(text: str, reason: str) -> None:
    out = parse_dq_output(text)
    assert isinstance(out, ParseFailure)
    assert out.reason == reason


def test_parser_refuses_repeats_by_key_and_wording() -> None:
    asked_free = [free_question("Is the  bank RED?")]
    out = parse_dq_output("<think>x</think><question>is the bank red</question>", asked_free)
    assert isinstance(out, ParseFailure) and out.reason == "repeated"
    # A structured question asked before, worded identically by the model, is a repeat too.
    out = parse_dq_output(
        f"<think>x</think><question>{presence_question('bank').text}</question>",
        [presence_question("bank")],
    )
    assert isinstance(out, ParseFailure) and out.reason == "repeated"
    assert isinstance(parse_dq_output(GOOD, asked_free), ParsedOutput)


def test_parser_think_optional_when_configured() -> None:
    out = parse_dq_output("<question>Is there a bank?</question>", require_think=False)
    assert out == ParsedOutput(think="", question="Is there a bank?")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DQPilotConfig(top_k_images=0)
    with pytest.raises(ValueError):
        DQPilotConfig(retries=-1)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, PlaceAnnotation]]:
    """Four SynthCities places (annotations + small rendered images) in a tmp data set."""
    root = tmp_path_factory.mktemp("dq_city")
    generate_city(root, "Dqville", 4, 1, seed=7, image_size=(96, 72), progress=False)
    places = read_annotations(root / "Annotations" / "Dqville.jsonl")
    return root, places_by_id(places)


def _oracle(by_id: dict[str, PlaceAnnotation]) -> EvidenceSource:
    """Exact evidence, so the prompt's region phrases are predictable."""
    return oracle_source(list(by_id.values()))


def make_search(root: Path, by_id: dict[str, PlaceAnnotation]):
    """Plumbing fixture, not a retriever: a fixed ranking that depends on the query's length,
    so it changes between rounds; hits point at the places' rendered images (relative to
    `root`, as a map stores them)."""
    ids = sorted(by_id)

    def search(text: str, k: int) -> list[PlaceHit]:
        shift = len(text.split()) % len(ids)
        order = ids[shift:] + ids[:shift]
        return [
            PlaceHit(
                i + 1,
                0.9 - 0.01 * i,
                pid,
                0.0,
                0.0,
                by_id[pid].views[0].image,
                i,
                "Dqville",
                str(root),
            )
            for i, pid in enumerate(order[:k])
        ]

    return search


class ScriptedBackend:
    """Returns queued outputs (the last one repeats) and records every call."""

    def __init__(self, outputs: Sequence[str]) -> None:
        self.outputs = list(outputs)
        self.calls: list[dict[str, Any]] = []

    def generate(
        self, batch, images, max_new_tokens=256, do_sample=False, temperature=0.7, seed=None
    ) -> list[str]:
        self.calls.append({"batch": batch, "images": images, "do_sample": do_sample, "seed": seed})
        out = []
        for _ in batch:
            out.append(self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0])
        return out


def _state(search, d0: str = "I see a building on a street.", top_k: int = 3) -> DialogueState:
    engine = DialogueEngine(
        search, _Never(), DialogueConfig(top_k=top_k, search_k=top_k, max_rounds=0, confidence=None)
    )
    return engine.start(d0, "s")


class _Never:
    name = "never"

    def ask(self, state):
        return None


# ---------------------------------------------------------------- (c) scripted backend


def test_good_output_becomes_free_question_with_reasoning(city) -> None:
    root, by_id = city
    backend = ScriptedBackend([GOOD])
    q = DQPilotQuestioner(
        DQPilotConfig(top_k_images=2, image_max_side=40),
        backend=backend,
        evidence=_oracle(by_id),
    )
    question = q.ask(_state(make_search(root, by_id)))
    assert question is not None
    assert question.kind == "free" and question.text == "Is there a bank?"
    assert question.reasoning == "Candidates 1 and 2 differ by the bank."
    assert not question.fallback
    assert q.name == "vlm-zero-shot"
    assert q.stats.parsed_first_try == 1 and q.stats.fallbacks == 0 and q.stats.retries == 0
    # The prompt: instruction, history, two labelled candidates with their images, resized.
    call = backend.calls[0]
    msgs = call["batch"][0]
    assert msgs[0]["content"][0]["text"] == DQ_PILOT_INSTRUCTION
    user_text = " ".join(c.get("text", "") for c in msgs[1]["content"])
    assert "I see a building on a street." in user_text
    assert "Candidate 1:" in user_text and "Candidate 2:" in user_text
    assert "Candidate 3:" not in user_text
    assert sum(c["type"] == "image" for c in msgs[1]["content"]) == 2
    assert len(call["images"][0]) == 2
    assert all(max(im.size) <= 40 for im in call["images"][0])
    assert call["do_sample"] is False


def test_region_phrases_enter_the_prompt(city) -> None:
    root, by_id = city
    backend = ScriptedBackend([GOOD])
    q = DQPilotQuestioner(DQPilotConfig(top_k_images=1), backend=backend, evidence=_oracle(by_id))
    state = _state(make_search(root, by_id))
    q.ask(state)
    top = state.candidates[0]
    phrases = oracle_place_evidence(by_id[top.place_id]).top_phrases(6, top.image_path)
    assert phrases, "the oracle sees what each view shows"
    user_text = " ".join(c.get("text", "") for c in backend.calls[0]["batch"][0][1]["content"])
    assert "Visible regions:" in user_text and phrases[0] in user_text
    # Asking again reuses the cached image.
    q.ask(state)
    assert q.images.hits >= 1 and q.images.misses == 1


def test_repeated_question_retries_then_falls_back(city, caplog) -> None:
    root, by_id = city
    search = make_search(root, by_id)
    asked = free_question("Is there a bank?")
    state0 = _state(search)
    from dataclasses import replace

    state = replace(state0, questions=(asked,), answers=("There is a bank.",), round=1)
    backend = ScriptedBackend([GOOD])  # always repeats the asked question
    q = DQPilotQuestioner(DQPilotConfig(), backend=backend, evidence=_oracle(by_id))
    question = q.ask(state)
    assert question is not None and question.fallback
    assert question.key != asked.key
    assert q.stats.failures["repeated"] == 2
    assert q.stats.retries == 1 and q.stats.fallbacks == 1 and q.stats.parsed_first_try == 0
    assert [c["do_sample"] for c in backend.calls] == [False, True]
    warnings = [r for r in caplog.records if r.name == "dlgpr_core.dialogue.dq_pilot"]
    assert len(warnings) == 2 and all("repeated" in r.getMessage() for r in warnings)
    assert backend.calls[0]["seed"] != backend.calls[1]["seed"]


def test_retry_can_recover(city) -> None:
    root, by_id = city
    backend = ScriptedBackend(["garbage", GOOD])
    q = DQPilotQuestioner(DQPilotConfig(), backend=backend)
    question = q.ask(_state(make_search(root, by_id)))
    assert question is not None and not question.fallback
    assert q.stats.parsed_after_retry == 1 and q.stats.failures["missing_tag"] == 1


def test_generic_fallbacks_never_repeat_without_annotations(city) -> None:
    root, by_id = city
    backend = ScriptedBackend(["noise"])
    q = DQPilotQuestioner(DQPilotConfig(retries=0), backend=backend)  # no places: generic list
    engine = DialogueEngine(
        make_search(root, by_id),
        q,
        DialogueConfig(max_rounds=3, top_k=3, search_k=3, confidence=None),
    )
    result = engine.run("I see a building.", FactUser(next(iter(by_id.values()))))
    questions = [s.pending_question for s in result.states if s.pending_question]
    assert len(questions) == 3
    assert [x.text for x in questions] == list(GENERIC_QUESTIONS[:3])
    assert all(x.fallback for x in questions)
    assert q.stats.fallbacks == 3 and q.stats.failures["missing_tag"] == 3


# ---------------------------------------------------------------- (e) ask_many


def test_ask_many_uses_one_batched_call_per_attempt(city) -> None:
    root, by_id = city
    search = make_search(root, by_id)
    states = [_state(search, "A street."), _state(search, "A long street with shops.")]
    backend = ScriptedBackend([GOOD])
    q = DQPilotQuestioner(DQPilotConfig(top_k_images=2), backend=backend, evidence=_oracle(by_id))
    out = q.ask_many(states)
    assert len(out) == 2 and all(x is not None and x.text == "Is there a bank?" for x in out)
    assert len(backend.calls) == 1 and len(backend.calls[0]["batch"]) == 2
    # A failure in one state retries only that state, still batched (one call).
    backend2 = ScriptedBackend([GOOD, "broken", GOOD])
    q2 = DQPilotQuestioner(DQPilotConfig(), backend=backend2, evidence=_oracle(by_id))
    out2 = q2.ask_many(states)
    assert len(backend2.calls) == 2 and len(backend2.calls[1]["batch"]) == 1
    assert out2[0] is not None and out2[1] is not None
    assert not out2[0].fallback and not out2[1].fallback
    assert q2.stats.parsed_first_try == 1 and q2.stats.parsed_after_retry == 1
    assert q2.ask_many([]) == []


# ---------------------------------------------------------------- (b), (d) tiny real VLM


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    from dlgpr_core.llm.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vlm") / "qwen2_5_vl")


def test_tiny_vlm_dialogue_end_to_end(city, tiny_vlm: Path) -> None:
    # Random weights: the model's output is noise, so it (almost surely, and deterministically
    # for this seed) never matches the tag format; what is tested is the bookkeeping of
    # prompt -> batched generate -> parse -> retry -> fallback inside a real dialogue.
    root, by_id = city
    cfg = DQPilotConfig(
        model=str(tiny_vlm), device="cpu", max_new_tokens=12, top_k_images=3, image_max_side=64
    )
    q = DQPilotQuestioner(cfg, evidence=_oracle(by_id))
    assert q.name == "vlm-zero-shot"
    target = sorted(by_id)[1]
    engine = DialogueEngine(
        make_search(root, by_id),
        q,
        DialogueConfig(max_rounds=2, top_k=3, search_k=3, confidence=None),
    )
    result = engine.run(by_id[target].caption, FactUser(by_id[target]), target_place_id=target)
    asked = [s.pending_question for s in result.states if s.pending_question is not None]
    assert len(result.states) == 3 and len(asked) == 2
    s = q.stats
    assert s.asked == 2
    assert s.parsed_first_try + s.parsed_after_retry + s.fallbacks + s.no_question == 2
    assert s.retries == 2 - s.parsed_first_try
    assert sum(s.failures.values()) == s.retries + s.fallbacks
    assert s.generate_calls == 2 + s.retries
    assert s.fallbacks == 2  # noise never carries both tags
    assert all(x.fallback and x.reasoning.startswith("fallback") for x in asked)
    assert len({x.key for x in asked}) == 2
    # The fallback is the annotation-based questioner, so the simulated user answers it.
    assert all(x.kind != "free" for x in asked)
    assert len(result.final.answers) == 2


def test_backend_errors_are_clear(tmp_path: Path, tiny_vlm: Path) -> None:
    from dlgpr_core.llm.vlm import load_vlm, resolve_dtype

    with pytest.raises(FileNotFoundError, match="not found"):
        load_vlm(tmp_path / "missing", device="cpu")
    with pytest.raises(FileNotFoundError, match="adapter"):
        load_vlm(tiny_vlm, adapter=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int3", "cpu")


def test_backend_refuses_text_only_model(tmp_path: Path, single_thread: None) -> None:
    from dlgpr_core.llm.tiny import build_tiny_causal_lm
    from dlgpr_core.llm.vlm import load_vlm

    path = build_tiny_causal_lm(tmp_path / "causal")
    with pytest.raises(ValueError, match="not an image-text-to-text"):
        load_vlm(path, device="cpu")


def test_backend_batched_generation(tiny_vlm: Path) -> None:
    from dlgpr_core.llm.vlm import load_vlm

    vlm = load_vlm(tiny_vlm, device="cpu")
    # transformers 5 happened to survive right padding for this model (with a warning), so
    # the batch-invariance checks below cannot catch it alone: check the setting too.
    assert vlm.tokenizer.padding_side == "left"
    batch = [
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "a"}, {"type": "image"}],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a much longer prompt " * 8},
                    {"type": "image"},
                ],
            }
        ],
    ]
    imgs = [
        [Image.new("RGB", (60, 40), "red"), Image.new("RGB", (40, 60), "blue")],
        [Image.new("RGB", (50, 50), "green")],
    ]
    greedy = vlm.generate(batch, imgs, max_new_tokens=6)
    assert len(greedy) == 2 and all(isinstance(t, str) for t in greedy)
    assert vlm.generate(batch, imgs, max_new_tokens=6) == greedy  # greedy is deterministic
    sampled = vlm.generate(batch, imgs, max_new_tokens=6, do_sample=True, temperature=1.0, seed=1)
    assert sampled == vlm.generate(
        batch, imgs, max_new_tokens=6, do_sample=True, temperature=1.0, seed=1
    )
    # Left padding: a prompt's completion does not depend on what it is batched with (the
    # prompts differ in length, so the first one is padded inside the batch).
    assert vlm.generate(batch[:1], imgs[:1], max_new_tokens=6) == greedy[:1]
    assert vlm.generate(batch[1:], imgs[1:], max_new_tokens=6) == greedy[1:]
    with pytest.raises(ValueError, match="image items"):
        vlm.generate(batch, [imgs[0], []], max_new_tokens=2)


def test_lora_adapter_loads_as_dq_pilot(city, tiny_vlm: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    assert (adapter_dir / "adapter_config.json").is_file()

    root, by_id = city
    cfg = DQPilotConfig(
        model=str(tiny_vlm),
        adapter=str(adapter_dir),
        device="cpu",
        max_new_tokens=8,
        top_k_images=2,
        image_max_side=64,
        retries=0,
    )
    q = DQPilotQuestioner(cfg, evidence=_oracle(by_id))
    assert q.name == "dq-pilot"
    from peft import PeftModel

    assert isinstance(q.backend.model, PeftModel)  # type: ignore[attr-defined]
    question = q.ask(_state(make_search(root, by_id)))
    assert question is not None  # noise -> fallback, but generation ran through the adapter
    assert q.stats.generate_calls == 1
