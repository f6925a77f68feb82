"""DQ-pilot: a vision-language questioner that looks at the candidates (paper Sec. 4.3).

The model sees the paper's instruction, the dialogue so far (d0, then every question and
answer) and the retriever's top-k candidate images, reasons in four steps inside
``<think>`` and asks one question inside ``<question>``. The same class is the zero-shot
baseline of Table 1 when no LoRA adapter is given.

A language model's output cannot be trusted to follow the format, so every output is parsed
strictly (the GRPO format reward checks the same template) and a bad one is never raised
to the dialogue loop: it is retried once with sampling, then replaced by a fallback
question (a rule-based questioner's, else a generic one not asked yet), and counted, so an
evaluation can report how often the model itself produced the question.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dlgpr_core.dialogue.questioner import Questioner
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.questions import Question, free_question
from dlgpr_core.dialogue.state import DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence

if TYPE_CHECKING:
    from PIL import Image

    from dlgpr_core.llm.vlm import ChatBackend, Message

log = logging.getLogger(__name__)

DQ_PILOT_INSTRUCTION = """\
You are DQ-pilot, the questioner of a dialogue-based place recognition system. A user \
standing somewhere in a city has described what they see, and a retriever has returned the \
candidate places shown below (street-level images, best match first). Your goal is to ask \
the user ONE question whose answer best separates the candidates, so that the retriever \
can single out the user's place.

Before asking, reason in four steps:
1. Analyze the dialogue history: summarize the evidence the user has confirmed and the \
evidence that has been ruled out.
2. Validate the candidates against the dialogue: compare what each candidate image shows \
with the dialogue and set aside the candidates that contradict it.
3. Identify the key visual differentiators: among the remaining candidates, find the \
concrete, visible cues (buildings, signs, colours, street furniture, their positions) that \
most clearly tell them apart.
4. Formulate a strategy: choose the question that targets the most decisive remaining \
uncertainty, so that its answer gives the most information.

Ask about static things the user can see (never cars or people), do not repeat a question \
already asked, and keep the question short and answerable by someone standing there.

Answer in exactly this format:
<think>your four-step reasoning</think>
<question>one question</question>"""
"""The paper's questioner instruction (Sec. 3, Step 3 and Sec. 4.3), reworded; SFT data
and inference must use the same text, so trainers import it from here."""

GENERIC_QUESTIONS: tuple[str, ...] = (
    "What kind of building is directly in front of you?",
    "What colour is the facade of the nearest building?",
    "Can you read the name on any shop sign nearby?",
    "Is there any street furniture nearby, such as a bench, a bus stop or a phone booth?",
    "Are there any trees along the street?",
    "How many storeys does the tallest building around you have?",
    "What are the pavements laid with?",
    "How wide is the street?",
    "Is there a statue or a fountain nearby?",
    "What does the roof of the nearest building look like?",
)
"""Last-resort questions when the model fails and no annotation-based questioner exists:
useful anywhere in a street scene, asked in this order, never twice."""

FailureReason = Literal[
    "missing_tag", "empty_question", "several_questions", "too_long", "repeated"
]


@dataclass(frozen=True)
class ParsedOutput:
    """A well-formed DQ-pilot output."""

    think: str
    question: str


@dataclass(frozen=True)
class ParseFailure:
    """Why an output was refused; `detail` is for the log only."""

    reason: FailureReason
    detail: str = ""


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_QUESTION = re.compile(r"<question>(.*?)</question>", re.DOTALL | re.IGNORECASE)
_QUESTION_OPEN = re.compile(r"<question>", re.IGNORECASE)
_QUOTES = "\"'`“”‘’"


def _text_key(text: str) -> str:
    """Phrasing-level identity (the same normalisation as a free `Question.key`)."""
    return " ".join(text.lower().split()).rstrip("?. ")


def _asked_keys(asked: Iterable[Question]) -> set[object]:
    """Probe keys and normalised texts: a free question that words a structured one asked
    before (or the reverse) is a repeat too."""
    keys: set[object] = set()
    for q in asked:
        keys.add(q.key)
        keys.add(_text_key(q.text))
    return keys


def _is_repeat(q: Question, asked_keys: set[object]) -> bool:
    return q.key in asked_keys or _text_key(q.text) in asked_keys


def parse_dq_output(
    text: str,
    asked: Iterable[Question] = (),
    max_words: int = 40,
    require_think: bool = True,
) -> ParsedOutput | ParseFailure:
    """Check `text` against ``<think>...</think><question>...</question>``.

    Strict on purpose: several questions would be answered partly and a long one is not a
    question a person answers in a sentence, so both are refused rather than trimmed.
    """
    if require_think and _THINK.search(text) is None:
        return ParseFailure("missing_tag", "no <think>...</think>")
    n_open = len(_QUESTION_OPEN.findall(text))
    blocks = _QUESTION.findall(text)
    if not blocks:
        return ParseFailure("missing_tag", "no <question>...</question>")
    if n_open > 1 or len(blocks) > 1:
        return ParseFailure("several_questions", f"{n_open} <question> tags")
    question = " ".join(blocks[0].split()).strip(_QUOTES + " ")
    if not question.strip("?.! "):
        return ParseFailure("empty_question")
    if question.count("?") > 1:
        return ParseFailure("several_questions", f"{question.count('?')} question marks")
    n_words = len(question.split())
    if n_words > max_words:
        return ParseFailure("too_long", f"{n_words} words > {max_words}")
    if _is_repeat(free_question(question), _asked_keys(asked)):
        return ParseFailure("repeated", question)
    match = _THINK.search(text)
    think = "" if match is None else match.group(1).strip()
    return ParsedOutput(think=think, question=question)


@dataclass
class DQPilotStats:
    """What the model did, for evaluation reports (a fallback is not the model's question)."""

    asked: int = 0
    """Questions requested (states passed to `ask`/`ask_many`)."""
    parsed_first_try: int = 0
    parsed_after_retry: int = 0
    retries: int = 0
    """Generations repeated after a failure (one per state and retry)."""
    fallbacks: int = 0
    """Fallback questions returned."""
    no_question: int = 0
    """Requests that ended with no question at all (model and fallbacks exhausted)."""
    generate_calls: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Refused outputs by `FailureReason` (every attempt counts)."""

    def as_dict(self) -> dict[str, object]:
        """Plain types, for JSON reports."""
        out = dataclasses.asdict(self)
        out["failures"] = dict(self.failures)
        return out


@dataclass(frozen=True)
class DQPilotConfig:
    """Model, prompt and decoding settings of the DQ-pilot questioner."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Hub id or local directory of the base VLM (the paper fine-tunes Qwen2.5-VL-7B)."""
    adapter: str | None = None
    """LoRA adapter directory (DQ-pilot); None runs the base model zero-shot."""
    top_k_images: int = 5
    """Candidates shown to the model, best first."""
    image_max_side: int = 448
    """Longest side of each candidate image in pixels; bounds the visual tokens per image."""
    max_new_tokens: int = 512
    temperature: float = 0.7
    do_sample: bool = False
    """Sampling for the first try; retries always sample (greedy would repeat the failure)."""
    max_question_words: int = 40
    retries: int = 1
    require_think: bool = True
    """Refuse outputs without a <think> block (the format the model is trained on)."""
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    image_root: str | None = None
    """Where this machine keeps the data set when it moved since the map was built."""
    image_cache_size: int = 256
    max_regions: int = 6
    """Region phrases listed per candidate (when annotations are given)."""

    def __post_init__(self) -> None:
        if self.top_k_images < 1 or self.image_max_side < 28 or self.max_new_tokens < 1:
            raise ValueError(f"invalid DQ-pilot config {self}")
        if self.retries < 0 or self.max_question_words < 1 or self.temperature <= 0:
            raise ValueError(f"invalid DQ-pilot config {self}")


class ImageCache:
    """LRU cache of resized candidate images by file path: the same top candidates come
    back round after round and across dialogues, and decoding a JPEG costs more than a
    tiny model's forward pass."""

    def __init__(self, max_side: int, capacity: int = 256) -> None:
        self.max_side = max_side
        self.capacity = capacity
        self._items: OrderedDict[Path, Image.Image | None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path) -> Image.Image | None:
        """The RGB image, longest side at most `max_side`; None (warned once) if unreadable."""
        if path in self._items:
            self.hits += 1
            self._items.move_to_end(path)
            return self._items[path]
        self.misses += 1
        image = self._load(path)
        self._items[path] = image
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return image

    def _load(self, path: Path) -> Image.Image | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("candidate image %s unreadable (%s); prompting without it", path, exc)
            return None
        img.thumbnail((self.max_side, self.max_side))
        return img


def _region_phrases(place: PlaceEvidence | None, image_path: str, limit: int) -> list[str]:
    """The evidence phrases of the view that was retrieved (else of all the place's views),
    most confident first: what the map's annotators saw, the paper's region evidence."""
    if place is None or limit <= 0:
        return []
    return place.top_phrases(limit, image_path) or place.top_phrases(limit)


def dialogue_history_text(d0: str, questions: Sequence[Question], answers: Sequence[str]) -> str:
    """The history as the model reads it: d0, then numbered question/answer pairs."""
    lines = [f"Initial description: {d0.strip()}"]
    for i, (q, a) in enumerate(zip(questions, answers, strict=False), start=1):
        lines.append(f"Round {i} question: {q.text}")
        lines.append(f"Round {i} answer: {a}")
    if len(questions) == len(answers) == 0:
        lines.append("(No questions asked yet.)")
    return "\n".join(lines)


def build_dq_messages(
    d0: str,
    questions: Sequence[Question],
    answers: Sequence[str],
    candidates: Sequence[tuple[bool, Sequence[str]]],
    instruction: str = DQ_PILOT_INSTRUCTION,
) -> list[Message]:
    """The chat prompt: instruction (system), then history and labelled candidates (user).

    `candidates` holds (has_image, region phrases) per candidate, best first; an image
    item is emitted only where an image will be passed, in order. Public so that SFT/GRPO
    data builders produce the exact prompt the questioner sends at inference.
    """
    content: list[dict[str, str]] = [
        {
            "type": "text",
            "text": "Dialogue history:\n" + dialogue_history_text(d0, questions, answers),
        },
        {"type": "text", "text": f"\n\nCandidate places ({len(candidates)}, best match first):"},
    ]
    for i, (has_image, phrases) in enumerate(candidates, start=1):
        content.append({"type": "text", "text": f"\nCandidate {i}:"})
        if has_image:
            content.append({"type": "image"})
        else:
            content.append({"type": "text", "text": " (image unavailable)"})
        if phrases:
            content.append({"type": "text", "text": "\nVisible regions: " + "; ".join(phrases)})
    content.append(
        {
            "type": "text",
            "text": "\n\nReason through the four steps inside <think></think>, then ask "
            "exactly one question inside <question></question>.",
        }
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction}]},
        {"role": "user", "content": content},
    ]


class DQPilotQuestioner:
    """The `Questioner` of the paper: a (LoRA-tuned) VLM reasoning over candidate images.

    `backend` defaults to `VisionLanguageChat` loaded from `config` (model + adapter);
    anything with the same `generate` signature works (tests use a scripted one).
    """

    def __init__(
        self,
        config: DQPilotConfig | None = None,
        *,
        backend: ChatBackend | None = None,
        evidence: EvidenceSource | None = None,
        fallback: Questioner | None = None,
    ) -> None:
        self.config = config or DQPilotConfig()
        self.name = "dq-pilot" if self.config.adapter else "vlm-zero-shot"
        if backend is None:
            from dlgpr_core.llm.vlm import load_vlm

            backend = load_vlm(
                self.config.model,
                adapter=self.config.adapter,
                device=self.config.device,
                dtype=self.config.dtype,
            )
        self.backend: ChatBackend = backend
        self.evidence = evidence
        if fallback is None and evidence is not None:
            fallback = InfoGainQuestioner(evidence)
        self.fallback = fallback
        self.stats = DQPilotStats()
        self.images = ImageCache(self.config.image_max_side, self.config.image_cache_size)
        self._generation = 0

    def prompt(self, state: DialogueState) -> tuple[list[Message], list[Image.Image]]:
        """The chat messages and, in order, the images for `state`."""
        cfg = self.config
        root = Path(cfg.image_root) if cfg.image_root else None
        shown: list[tuple[bool, Sequence[str]]] = []
        images: list[Image.Image] = []
        for hit in state.candidates[: cfg.top_k_images]:
            img = self.images.get(hit.resolve(root)) if hit.image_path else None
            if img is not None:
                images.append(img)
            place = self.evidence.get(hit.place_id) if self.evidence else None
            shown.append((img is not None, _region_phrases(place, hit.image_path, cfg.max_regions)))
        n_answered = len(state.answers)
        messages = build_dq_messages(state.d0, state.questions[:n_answered], state.answers, shown)
        return messages, images

    def ask(self, state: DialogueState) -> Question | None:
        """The model's question for `state`, a retry's, or a fallback (`fallback=True`)."""
        return self.ask_many([state])[0]

    def ask_many(self, states: Sequence[DialogueState]) -> list[Question | None]:
        """One question per state from ONE batched generate call per attempt (retries are
        batched too), so an evaluator can run many dialogues in lockstep on a GPU."""
        cfg = self.config
        results: list[Question | None] = [None] * len(states)
        if not states:
            return results
        self.stats.asked += len(states)
        prompts = [self.prompt(s) for s in states]
        reasons: dict[int, list[str]] = {i: [] for i in range(len(states))}
        pending = list(range(len(states)))
        for attempt in range(cfg.retries + 1):
            if not pending:
                break
            if attempt > 0:
                self.stats.retries += len(pending)
            outputs = self._generate([prompts[i] for i in pending], sample=attempt > 0)
            still: list[int] = []
            for i, text in zip(pending, outputs, strict=True):
                parsed = parse_dq_output(
                    text,
                    states[i].questions,
                    max_words=cfg.max_question_words,
                    require_think=cfg.require_think,
                )
                if isinstance(parsed, ParsedOutput):
                    results[i] = free_question(parsed.question, reasoning=parsed.think)
                    if attempt == 0:
                        self.stats.parsed_first_try += 1
                    else:
                        self.stats.parsed_after_retry += 1
                    continue
                self.stats.failures[parsed.reason] += 1
                reasons[i].append(parsed.reason)
                log.warning(
                    "%s: unusable output for dialogue %s round %d (attempt %d): %s %s; "
                    "output: %.200r",
                    self.name,
                    states[i].dialogue_id,
                    states[i].round,
                    attempt + 1,
                    parsed.reason,
                    parsed.detail,
                    text,
                )
                still.append(i)
            pending = still
        for i in pending:
            results[i] = self._fallback(states[i], reasons[i])
        return results

    def _generate(
        self, prompts: Sequence[tuple[list[Message], list[Image.Image]]], sample: bool
    ) -> list[str]:
        cfg = self.config
        seed = cfg.seed + self._generation  # a new seed per call: a retry never replays
        self._generation += 1
        self.stats.generate_calls += 1
        outputs = self.backend.generate(
            [p[0] for p in prompts],
            [p[1] for p in prompts],
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample or sample,
            temperature=cfg.temperature,
            seed=seed,
        )
        if len(outputs) != len(prompts):
            raise RuntimeError(
                f"backend returned {len(outputs)} completions for {len(prompts)} prompts"
            )
        return [str(o) for o in outputs]

    def _fallback(self, state: DialogueState, reasons: Sequence[str]) -> Question | None:
        """The fallback questioner's question, else the first generic one not asked yet."""
        asked = _asked_keys(state.questions)
        note = f"fallback after unusable model output ({', '.join(reasons)})"
        q = self.fallback.ask(state) if self.fallback is not None else None
        if q is not None and not _is_repeat(q, asked):
            self.stats.fallbacks += 1
            return dataclasses.replace(q, fallback=True, reasoning=note)
        for text in GENERIC_QUESTIONS:
            g = free_question(text, reasoning=note, fallback=True)
            if not _is_repeat(g, asked):
                self.stats.fallbacks += 1
                return g
        self.stats.no_question += 1
        return None
