"""DQ-pilot training data and GRPO rewards (paper Sec. 4.3).

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

import json
import math
import random
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.annotations import places_by_id as index_places
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.dq_pilot import (
    DQPilotConfig,
    DQPilotQuestioner,
    ParsedOutput,
    parse_dq_output,
)
from dlgpr_core.dialogue.engine import DialogueConfig, DialogueEngine, DialogueState, SearchFn
from dlgpr_core.dialogue.knowledge import DONT_KNOW, PlaceKnowledge
from dlgpr_core.dialogue.metrics import DDIConfig, prg, semantic_ambiguity
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.questions import Question, free_question
from dlgpr_core.dialogue.user import FactUser
from dlgpr_core.mapdb.report import PlaceHit

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image

    from dlgpr_core.llm.vlm import Message

RewardFn = Callable[..., list[float]]
"""trl's reward signature: ``f(completions, **dataset_columns) -> one float per completion``."""


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
    """PRG of the teacher's question: the curriculum's quality filter reads it."""
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
    """Write one JSON object per line; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(ex.to_json() + "\n")
            n += 1
    return n


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


def prompt_questioner(
    config: DQDataConfig, places_by_id: Mapping[str, PlaceAnnotation]
) -> DQPilotQuestioner:
    """A `DQPilotQuestioner` used only for its `prompt` method (same code as inference)."""
    return DQPilotQuestioner(
        config.prompt_config(), backend=_NoGenerate(), places_by_id=places_by_id
    )


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


def build_examples(
    places: Sequence[PlaceAnnotation],
    search: SearchFn,
    config: DQDataConfig | None = None,
    places_by_id: Mapping[str, PlaceAnnotation] | None = None,
) -> list[DQExample]:
    """Teacher dialogues from each place's caption; one example per round with a question.

    `places_by_id` is every place the search can return (defaults to `places`): candidates'
    region phrases and the teacher's facts come from it.
    """
    cfg = config or DQDataConfig()
    by_id = dict(places_by_id or index_places(places))
    teacher = InfoGainQuestioner(by_id, top_k=cfg.dialogue.top_k)
    prompter = prompt_questioner(cfg, by_id)
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
            gain = prg([prev_rank], [next_rank])
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


EmbedTexts = Callable[[Sequence[str]], np.ndarray]
"""texts -> L2-normalised rows: the retriever's text encoder (phi_T of paper Eq. 1)."""


def score_difficulty(
    examples: Sequence[DQExample],
    places_by_id: Mapping[str, PlaceAnnotation],
    embed: EmbedTexts,
    ddi_config: DDIConfig | None = None,
) -> list[DQExample]:
    """Each example with its SA and DDI (paper Eqs. 1 and 3).

    Our reading of Eq. 1 for a dialogue round: t_t is the round's query (d0 + answers), its
    positive the target's description, its negatives the descriptions of the round's other
    top-k candidates: ambiguous when the query reads like the look-alikes and unlike its
    own place. RID = 1 - the teacher's PRG (how little the round's question resolved).
    """
    cfg = ddi_config or DDIConfig()
    texts: dict[str, str] = {}

    def text_of(pid: str) -> str | None:
        place = places_by_id.get(pid)
        return place.description if place is not None else None

    rows: list[tuple[int, str, list[str]]] = []
    for i, ex in enumerate(examples):
        negatives = [pid for pid in ex.candidates if pid != ex.target and text_of(pid)]
        if text_of(ex.target) is None or not negatives:
            continue
        query = " ".join((ex.d0, *ex.answers))
        rows.append((i, query, negatives))
        texts[ex.target] = text_of(ex.target) or ""
        texts.update({pid: text_of(pid) or "" for pid in negatives})
    ids = sorted(texts)
    place_vecs = dict(zip(ids, embed([texts[pid] for pid in ids]), strict=True)) if ids else {}
    query_vecs = embed([q for _, q, _ in rows]) if rows else np.zeros((0, 1))
    out = list(examples)
    for (i, _, negatives), qv in zip(rows, query_vecs, strict=True):
        ex = examples[i]
        vecs = [qv, place_vecs[ex.target], *(place_vecs[p] for p in negatives)]
        if any(not np.any(v) for v in vecs):
            continue  # a text the encoder cannot embed: cosine undefined, DDI left unset
        sa = semantic_ambiguity(
            qv, place_vecs[ex.target], np.stack([place_vecs[p] for p in negatives]), cfg.alpha
        )
        out[i] = replace(ex, sa=sa, ddi=cfg.score(sa, 1.0 - ex.teacher_prg))
    return out


def curriculum_split(
    examples: Sequence[DQExample],
    ddi_config: DDIConfig | None = None,
    n_sft: int | None = None,
    n_grpo: int | None = None,
    major_share: float = 0.7,
    seed: int = 0,
) -> tuple[list[DQExample], list[DQExample]]:
    """The paper's curriculum: drop rounds with PRG < tau_1, then an SFT set that is
    `major_share` low-DDI and a disjoint GRPO set that is `major_share` high-DDI.

    Sizes default to a 2:1 split of what survives (the paper's 20k : 10k); a side short
    of examples is topped up from the other, so no example is wasted. Examples without a
    DDI (no negatives) count as low-DDI."""
    cfg = ddi_config or DDIConfig()
    if not 0.0 <= major_share <= 1.0:
        raise ValueError(f"major_share must be in [0, 1], got {major_share}")
    kept = [e for e in examples if cfg.keep(e.teacher_prg)]
    rng = random.Random(seed)
    low = [e for e in kept if e.ddi is None or not cfg.is_high(e.ddi)]
    high = [e for e in kept if e.ddi is not None and cfg.is_high(e.ddi)]
    rng.shuffle(low)
    rng.shuffle(high)
    n_sft = round(len(kept) * 2 / 3) if n_sft is None else n_sft
    n_grpo = len(kept) - n_sft if n_grpo is None else n_grpo

    def take(first: list[DQExample], second: list[DQExample], n: int) -> list[DQExample]:
        want = min(round(major_share * n), len(first))
        chosen = first[:want]
        del first[:want]
        rest = min(n - len(chosen), len(second))
        chosen += second[:rest]
        del second[:rest]
        extra = min(n - len(chosen), len(first))
        chosen += first[:extra]
        del first[:extra]
        return chosen

    sft = take(low, high, n_sft)
    grpo = take(high, low, n_grpo)
    return sft, grpo


def _load_image(path: str, max_side: int) -> Image.Image:
    # Same decoding and resizing as DQPilotQuestioner's ImageCache, so training pixels
    # equal inference pixels.
    from PIL import Image

    with Image.open(path) as raw:
        img = raw.convert("RGB")
    img.thumbnail((max_side, max_side))
    return img


def to_hf_dataset(
    examples: Sequence[DQExample], image_max_side: int, with_completion: bool = True
) -> Dataset:
    """The conversational ``prompt`` + ``images`` columns trl's trainers read (SFT: also
    ``completion``, as one assistant message), plus the reward state columns."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for ex in examples:
        row: dict[str, Any] = {
            "prompt": ex.prompt,
            "images": [_load_image(p, image_max_side) for p in ex.images],
            "example_id": ex.example_id,
            "target": ex.target,
            "d0": ex.d0,
            "questions": list(ex.questions),
            "answers": list(ex.answers),
            "prev_rank": ex.prev_rank,
        }
        if with_completion:
            row["completion"] = [
                {"role": "assistant", "content": [{"type": "text", "text": ex.completion}]}
            ]
        rows.append(row)
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------- search


class LexicalSearch:
    """Deterministic TF-IDF cosine over place descriptions: a CPU stand-in retriever for
    tiny configs and tests where no trained map exists. Not the paper's retriever (CMPL);
    use `dlgpr_core.dialogue.evaluate.map_search` for real runs."""

    def __init__(self, places: Sequence[PlaceAnnotation], image_root: str | Path) -> None:
        self.places = list(places)
        self.image_root = str(image_root)
        docs = [_tokens(p.description) for p in self.places]
        df: Counter[str] = Counter()
        for d in docs:
            df.update(set(d))
        n = len(docs)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.vectors = [self._vector(d) for d in docs]

    def _vector(self, tokens: Sequence[str]) -> dict[str, float]:
        tf = Counter(tokens)
        vec = {w: c * self.idf.get(w, 0.0) for w, c in tf.items() if w in self.idf}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Dense unit TF-IDF rows over the description vocabulary (the curriculum's
        stand-in text encoder; all-zero for text with no known word)."""
        vocab = {w: i for i, w in enumerate(sorted(self.idf))}
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for row, text in enumerate(texts):
            for w, v in self._vector(_tokens(text)).items():
                out[row, vocab[w]] = v
        return out

    def __call__(self, text: str, k: int) -> list[PlaceHit]:
        q = self._vector(_tokens(text))
        scores = [sum(q.get(w, 0.0) * v for w, v in vec.items()) for vec in self.vectors]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        hits: list[PlaceHit] = []
        for rank, i in enumerate(order, start=1):
            p = self.places[i]
            image = p.views[0].image if p.views else ""
            hits.append(
                PlaceHit(
                    rank,
                    scores[i],
                    namespaced_place_id(p.city, p.place_id),
                    0.0,
                    0.0,
                    image,
                    i,
                    p.city,
                    self.image_root,
                )
            )
        return hits


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# --------------------------------------------------------------------------- rewards


def completion_text(completion: Any) -> str:
    """The generated text of one completion, plain or conversational (trl passes a list
    of assistant messages for conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(str(c.get("text") or "") for c in content if isinstance(c, dict))
    return ""


_TAG = re.compile(r"</?(think|question)>", re.IGNORECASE)


def format_ok(text: str, max_question_words: int = 40) -> bool:
    """R_fmt's test: exactly one think block then exactly one question block, in that
    order, with a question the inference parser accepts (non-empty, one question, short)."""
    tags = [m.group(0).lower() for m in _TAG.finditer(text)]
    if tags != ["<think>", "</think>", "<question>", "</question>"]:
        return False
    parsed = parse_dq_output(text, max_words=max_question_words, require_think=True)
    return isinstance(parsed, ParsedOutput)


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_fmt (paper Eq. 7): 1 for a well-formed output, else 0."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


class RetrievalGainReward:
    """R_prg (paper Eq. 8): PRG of the target between the round's query and the query with
    the simulated user's answer to the *generated* question appended.

    The positives are the target place (one item: the search ranks places, and a place is
    the unit of a hit); the target's rank comes from really re-running `search`. Outputs
    the questioner would refuse at inference (bad format, repeats) get 0, since the
    dialogue would not have asked them. Ranks of a query are cached: the G completions of
    a prompt share its "before" query.
    """

    __name__ = "retrieval_gain"  # trl names logged rewards by __name__

    def __init__(
        self,
        places_by_id: Mapping[str, PlaceAnnotation],
        search: SearchFn,
        search_k: int,
        max_question_words: int = 40,
        cache_size: int = 4096,
    ) -> None:
        self.places_by_id = places_by_id
        self.search = search
        self.search_k = search_k
        self.max_question_words = max_question_words
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()

    def rank(self, text: str, target: str) -> int:
        """1-indexed whole-list rank of `target` for query `text` (cached)."""
        key = (text, target)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = target_rank(self.search(text, self.search_k), target)
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def score(
        self,
        text: str,
        target: str,
        d0: str,
        questions: Sequence[str],
        answers: Sequence[str],
    ) -> float:
        """The reward of one completion."""
        if not format_ok(text, self.max_question_words):
            return 0.0
        asked = [free_question(q) for q in questions]
        parsed = parse_dq_output(text, asked, max_words=self.max_question_words)
        if not isinstance(parsed, ParsedOutput):
            return 0.0
        place = self.places_by_id[target]
        answer = FactUser(place).answer(free_question(parsed.question)).strip()
        before = self.rank(" ".join((d0, *answers)), target)
        after = self.rank(" ".join((d0, *answers, answer)), target)
        return prg([before], [after])

    def __call__(
        self,
        completions: Sequence[Any],
        *,
        target: Sequence[str],
        d0: Sequence[str],
        questions: Sequence[Sequence[str]],
        answers: Sequence[Sequence[str]],
        **kwargs: Any,
    ) -> list[float]:
        return [
            self.score(completion_text(c), t, d, q, a)
            for c, t, d, q, a in zip(completions, target, d0, questions, answers, strict=True)
        ]
