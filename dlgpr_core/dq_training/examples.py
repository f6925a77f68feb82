"""DQ-pilot training examples: the teacher's dialogues turned into (prompt, target) pairs.

SFT needs (prompt, target) pairs that look exactly like what the questioner sees at
inference, and GRPO needs, per prompt, enough dialogue state to re-run the retriever with
the simulated user's answer to a *generated* question. Both come from the same source: the
dialogue engine run over a data set with the information-gain questioner as teacher and
the fact-based user. Every round where the teacher asked becomes one `DQExample`.

The prompt is produced by `DQPilotQuestioner.prompt` itself (with a backend that refuses
to generate), so that candidate selection, image availability, region phrases and the
message layout can never drift between training and inference; only the image *paths*
are kept, the pixels are loaded (and resized the same way) when a data set is built.

The teacher completion's ``<think>`` block is a short templated version of the paper's four
reasoning steps, derived from the candidates' annotated facts (which candidates contradict
the answers so far, how the chosen question splits the rest); it teaches the format and a
plausible reasoning pattern, not a free-form chain of thought.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlgpr_core.atomic import write_atomic
from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.annotations import places_by_id as index_places
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.answers import DONT_KNOW
from dlgpr_core.dialogue.dq_pilot import (
    DQPilotConfig,
    DQPilotQuestioner,
)
from dlgpr_core.dialogue.engine import DialogueEngine, SearchFn
from dlgpr_core.dialogue.metrics import prg, prg_place_rank, target_image_ranks
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.state import DialogueConfig, DialogueState
from dlgpr_core.evaluation.oracle import oracle_source
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.report import ImageHit, PlaceHit
from dlgpr_core.users.fact import FactUser
from dlgpr_core.users.knowledge import PlaceKnowledge

if TYPE_CHECKING:
    from dlgpr_core.llm.vlm import Message

# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class DQExample:
    """One questioner turn: the exact inference prompt, the teacher's answer, and the state
    the retrieval-gain reward needs to score any other question asked at this turn."""

    example_id: str
    dialogue_id: str
    round: int
    target: str
    """Namespaced place id of the user's place (never shown to the model)."""
    d0: str
    questions: list[str]
    """Texts of the questions asked so far (for the repeat check of the parser)."""
    answers: list[str]
    prompt: list[Message]
    images: list[str]
    """Candidate image files, in the order of the prompt's image items."""
    completion: str
    """Teacher target ``<think>...</think><question>...</question>``."""
    teacher_question: str
    prev_rank: int
    """1-indexed rank of the target in this round's ranking (search_k + 1 when absent)."""
    next_rank: int
    """The same after the teacher's question was answered."""
    teacher_prg: float
    """PRG of the teacher's question: the curriculum's quality filter reads it. Eq. 2 over
    the target's image ranks when the examples were built with an image search, else the
    place-rank stand-in (`prg_place_rank` of prev_rank -> next_rank)."""
    candidates: list[str] = field(default_factory=list)
    """The round's top-k place ids (SA's negatives are the non-target ones)."""
    sa: float | None = None
    """Semantic ambiguity of the round (paper Eq. 1); set by `score_difficulty`."""
    ddi: float | None = None
    """Discriminative difficulty index (paper Eq. 3); set by `score_difficulty`."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DQExample:
        return cls(**dict(data))


def write_examples(path: Path | str, examples: Iterable[DQExample]) -> int:
    """Write one JSON object per line; returns how many were written. Written beside the
    target and renamed over it, so a crash leaves the old file or the new one, never a
    torn one that a later stage would train on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for ex in examples:
                fh.write(ex.to_json() + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


KEY_SUFFIX = ".key.json"
"""Beside an examples file: the hash and the settings of the config that built it."""


def cache_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of everything that shapes the examples (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_cache_key(path: Path | str, settings: Mapping[str, Any]) -> Path:
    """Record which settings built the examples file at `path` (atomically)."""
    record = {"key": cache_key(settings), "settings": dict(settings)}
    text = json.dumps(record, indent=1, sort_keys=True, default=str)
    return write_atomic(Path(str(path) + KEY_SUFFIX), text)


def cache_drift(path: Path | str, settings: Mapping[str, Any]) -> list[str] | None:
    """How the examples file at `path` differs from what `settings` would build: [] when
    it was built by them, the differing top-level settings otherwise, None when the file
    has no record of what built it (an older run, or a file made elsewhere)."""
    key_file = Path(str(path) + KEY_SUFFIX)
    try:
        record = json.loads(key_file.read_text(encoding="utf-8"))
        old, key = record["settings"], record["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if key == cache_key(settings):
        return []
    new = json.loads(json.dumps(dict(settings), default=str))
    if not isinstance(old, dict):
        return ["<unreadable record>"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["<hash>"]


def read_examples(path: Path | str) -> list[DQExample]:
    """Read a JSONL file written by `write_examples` (blank lines are skipped)."""
    out: list[DQExample] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(DQExample.from_dict(json.loads(line)))
    return out


@dataclass(frozen=True)
class DQDataConfig:
    """How examples are produced. The prompt settings must equal the `DQPilotConfig` the
    trained adapter is later run with (`prompt_config` builds it)."""

    dialogue: DialogueConfig = field(
        default_factory=lambda: DialogueConfig(max_rounds=5, top_k=10, search_k=10, confidence=None)
    )
    """Teacher dialogues; confidence=None keeps hard late rounds in the pool."""
    top_k_images: int = 5
    image_max_side: int = 448
    max_regions: int = 6
    image_root: str | None = None
    min_prg: float | None = None
    """Drop rounds whose teacher PRG is below this (the paper's tau_1 filter); None keeps all."""

    def prompt_config(self, model: str = "unused", adapter: str | None = None) -> DQPilotConfig:
        """The questioner config whose prompts these examples reproduce."""
        return DQPilotConfig(
            model=model,
            adapter=adapter,
            top_k_images=self.top_k_images,
            image_max_side=self.image_max_side,
            max_regions=self.max_regions,
            image_root=self.image_root,
        )


class _NoGenerate:
    """Backend of the prompt-only questioner: building data must never run a model."""

    def generate(self, *args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("the data builder only renders prompts")


def prompt_questioner(config: DQDataConfig, evidence: EvidenceSource) -> DQPilotQuestioner:
    """A `DQPilotQuestioner` used only for its `prompt` method (same code as inference);
    `evidence` gives the candidates' region phrases, as the robot's map does at inference."""
    return DQPilotQuestioner(config.prompt_config(), backend=_NoGenerate(), evidence=evidence)


def prompt_and_paths(
    questioner: DQPilotQuestioner, state: DialogueState
) -> tuple[list[Message], list[str]]:
    """The inference prompt of `state` and the files of its image items, in order."""
    messages, _ = questioner.prompt(state)
    cfg = questioner.config
    root = Path(cfg.image_root) if cfg.image_root else None
    paths: list[str] = []
    for hit in state.candidates[: cfg.top_k_images]:
        if not hit.image_path:
            continue
        path = hit.resolve(root)
        # Cached by `prompt` just now: an image it could not read got no image item.
        if questioner.images.get(path) is not None:
            paths.append(str(path))
    return messages, paths


# --------------------------------------------------------------------------- teacher think


def _numbers(ids: Sequence[int]) -> str:
    words = [str(i) for i in ids]
    label = "candidate" if len(words) == 1 else "candidates"
    if len(words) <= 1:
        return f"{label} {''.join(words)}"
    return f"{label} {', '.join(words[:-1])} and {words[-1]}"


def _strip_yes_no(text: str) -> str:
    return re.sub(r"^(yes|no),\s*", "", text.strip(), flags=re.IGNORECASE)


def teacher_think(
    state: DialogueState,
    question: Question,
    places_by_id: Mapping[str, PlaceAnnotation],
    n_shown: int,
) -> str:
    """The four reasoning steps, filled from the shown candidates' facts.

    Only what the model can know is used (dialogue, candidates and their annotations);
    the target stays hidden, so the reasoning is one the model could have produced.
    """
    n_answered = len(state.answers)
    asked = state.questions[:n_answered]
    shown = state.candidates[:n_shown]
    knowledge = {
        i: PlaceKnowledge.from_place(places_by_id[h.place_id])
        for i, h in enumerate(shown, start=1)
        if h.place_id in places_by_id
    }

    # 1. history
    if n_answered == 0:
        step1 = "1. History: only the initial description is known; nothing is confirmed yet."
    else:
        confirmed = " ".join(a for a in state.answers if a != DONT_KNOW) or "nothing new"
        unknown = sum(a == DONT_KNOW for a in state.answers)
        step1 = f"1. History: {n_answered} answers so far. Confirmed: {confirmed}"
        if unknown:
            step1 += f" ({unknown} question(s) could not be answered.)"

    # 2. candidates against the dialogue: a candidate whose truthful answer to an asked
    # structured question differs from the user's answer contradicts the dialogue.
    contradicting: list[int] = []
    for i, k in knowledge.items():
        for q, a in zip(asked, state.answers, strict=False):
            if q.kind != "free" and a != DONT_KNOW and k.answer(q) != a:
                contradicting.append(i)
                break
    remaining = [i for i in range(1, len(shown) + 1) if i not in contradicting]
    if not remaining:
        remaining = list(range(1, len(shown) + 1))
        step2 = (
            "2. Candidates: every shown candidate contradicts the answers, so the place is "
            "probably further down the list; compare them anyway."
        )
    elif contradicting:
        step2 = (
            f"2. Candidates: {_numbers(contradicting)} contradict the answers; "
            f"{_numbers(remaining)} remain."
        )
    else:
        step2 = f"2. Candidates: all {len(shown)} candidates are consistent with the dialogue."

    # 3. differentiators: how the chosen question splits the remaining candidates.
    groups: dict[str, list[int]] = {}
    for i in remaining:
        known = knowledge.get(i)
        said = (
            "unclear"
            if known is None
            else _strip_yes_no(known.answer(question, yes_no_prefix=False))
        )
        if said == DONT_KNOW:
            said = "unclear"
        groups.setdefault(said.rstrip("."), []).append(i)
    parts = [f"{_numbers(ids)}: {text}" for text, ids in groups.items()]
    step3 = "3. Differentiators: " + "; ".join(parts) + "."

    # 4. strategy
    largest = max((len(ids) for ids in groups.values()), default=0)
    if len(groups) > 1:
        step4 = (
            f"4. Strategy: this question splits the {len(remaining)} remaining candidates "
            f"into {len(groups)} groups (largest {largest}), the most informative one left."
        )
    else:
        step4 = (
            "4. Strategy: the shown candidates agree on the visible cues, so ask about a "
            "detail that separates the wider candidate list."
        )
    return "\n".join((step1, step2, step3, step4))


def teacher_completion(
    state: DialogueState,
    question: Question,
    places_by_id: Mapping[str, PlaceAnnotation],
    n_shown: int,
) -> str:
    """The SFT target in the exact format `parse_dq_output` accepts."""
    think = teacher_think(state, question, places_by_id, n_shown)
    return f"<think>{think}</think>\n<question>{question.text}</question>"


# --------------------------------------------------------------------------- building


def target_rank(ranking: Sequence[PlaceHit], target: str) -> int:
    """1-indexed rank of `target`; len(ranking) + 1 when it was not returned (the
    pessimistic bound, as `DialogueState.rank_of`)."""
    for i, hit in enumerate(ranking):
        if hit.place_id == target:
            return i + 1
    return len(ranking) + 1


ImageSearchFn = Callable[[str, int], Sequence[ImageHit]]
"""search_images(text, k) -> the top-k images, best first (e.g. over `MapDatabase.search_images`).

What PRG (Eq. 2) needs: the rank of every image of the target, which a place search
(`SearchFn`, one hit per place) cannot give."""


def image_ranks_of(
    image_search: ImageSearchFn, text: str, k: int, target: str, n_images: int
) -> list[int]:
    """1-indexed ranks of the target's images for query `text` (`target_image_ranks`);
    `n_images` is how many images the target has (k should cover the whole map)."""
    hits = image_search(text, k)
    found = sum(h.place_id == target for h in hits)
    ranks = target_image_ranks([h.place_id for h in hits], target, max(n_images, found, 1))
    return [int(r) for r in ranks]


def build_examples(
    places: Sequence[PlaceAnnotation],
    search: SearchFn,
    config: DQDataConfig | None = None,
    places_by_id: Mapping[str, PlaceAnnotation] | None = None,
    evidence: EvidenceSource | None = None,
    image_search: ImageSearchFn | None = None,
    image_search_k: int | None = None,
) -> list[DQExample]:
    """Teacher dialogues from each place's caption; one example per round with a question.

    `places_by_id` is every place the search can return (defaults to `places`): the
    teacher's facts come from it, and the teacher asks with oracle evidence (training may
    read the training city's ground truth). `evidence` is what the prompts show as region
    phrases: the evidence the robot will have at inference (the training map's annotator);
    without it, the oracle's phrases.

    Teacher PRG: with `image_search` (and `image_search_k`, the map's image count) it is
    Eq. 2 over the rank of every image of the target before and after the answer; without
    it only the place search's ranks exist, so it is `prg_place_rank`, the one-positive
    stand-in.
    """
    if image_search is not None and image_search_k is None:
        raise ValueError("image_search needs image_search_k (the number of images to rank)")
    cfg = config or DQDataConfig()
    by_id = dict(places_by_id or index_places(places))
    oracle = oracle_source(list(by_id.values()))
    teacher = InfoGainQuestioner(oracle, top_k=cfg.dialogue.top_k)
    prompter = prompt_questioner(cfg, evidence or oracle)
    engine = DialogueEngine(search, teacher, cfg.dialogue)
    out: list[DQExample] = []
    for place in places:
        target = namespaced_place_id(place.city, place.place_id)
        did = f"{place.city}:{place.place_id}"
        result = engine.run(place.caption, FactUser(place), target, dialogue_id=did)
        for state, after in zip(result.states, result.states[1:], strict=False):
            question = state.pending_question
            if question is None:
                continue
            prev_rank = target_rank(state.ranking, target)
            next_rank = target_rank(after.ranking, target)
            if image_search is not None and image_search_k is not None:
                n_images = len(by_id[target].views) if target in by_id else 1
                gain = prg(
                    image_ranks_of(image_search, state.query, image_search_k, target, n_images),
                    image_ranks_of(image_search, after.query, image_search_k, target, n_images),
                )
            else:
                gain = prg_place_rank(prev_rank, next_rank)
            if cfg.min_prg is not None and gain < cfg.min_prg:
                continue
            messages, paths = prompt_and_paths(prompter, state)
            out.append(
                DQExample(
                    example_id=f"{did}:r{state.round}",
                    dialogue_id=did,
                    round=state.round,
                    target=target,
                    d0=state.d0,
                    questions=[q.text for q in state.questions[: len(state.answers)]],
                    answers=list(state.answers),
                    prompt=messages,
                    images=paths,
                    completion=teacher_completion(state, question, by_id, cfg.top_k_images),
                    teacher_question=question.text,
                    prev_rank=prev_rank,
                    next_rank=next_rank,
                    teacher_prg=gain,
                    candidates=[h.place_id for h in state.candidates],
                )
            )
    return out
