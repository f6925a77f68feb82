"""Teacher annotator: a vision-language model describes each image, noun phrases become evidence.

This is the paper's DQ-Cities pipeline (Sec. 3) run on the robot's own map: stage 1, a
teacher model (GPT-4o in the paper) writes a description of each image restricted to
permanent, static elements, because only those identify a place on another day; stage 2,
`dlgpr_core.evidence.noun_phrases` extracts greedily expanded noun phrases ("the red brick
bank with green awnings") and reads the ontology slots they name. Each image gets one item
per phrase, one per attribute slot, and the description itself (attribute ``description``,
no category) so that a map can index the text later.

Spec strings (``create_teacher_annotator(arg)`` gets what follows ``teacher:``):

- ``teacher:openai:<model>@<base url>``: any OpenAI-compatible chat-completions endpoint that
  takes images (OpenAI, vLLM, llama.cpp server, ...), e.g.
  ``teacher:openai:gpt-4o@https://api.openai.com/v1``; ``teacher:openai:<model>`` means
  OpenAI itself. The key is read from ``$OPENAI_API_KEY`` (option ``api_key_env``) and sent
  as a bearer token, only over HTTPS or to this machine (`OpenAIChat`, the one client both
  use: option ``allow_insecure_key``); each request has a total ``deadline`` (default
  600 s); each image travels as a base64 JPEG ``image_url`` item.
- ``teacher:<hub id or local directory>``: any transformers image-text-to-text model, loaded
  by `dlgpr_core.llm.vlm` (option ``adapter`` for a LoRA adapter, ``device``, ``dtype``,
  ``batch_size``).

Failures are counted and reported, never silent: the server backend retries 429/5xx and
transport errors with exponential backoff (`OpenAIChat`), and malformed replies (no choices,
no text, too few words) with the same backoff; a local model retries a malformed reply with
sampling, since greedy decoding would only repeat it. An image whose teacher failed gets no
evidence, is listed in `TeacherAnnotator.failures` and logged, and is counted in `stats`
(`TeacherAnnotator.report()` renders them). The map's annotation loop records every image
an annotator returns as done, so such an image stays without evidence until a re-run with
``redo``; with ``strict=True`` a batch with any failure raises instead, nothing of it is
stored, and the next run retries it. A batch in which every image was refused (a wrong key,
model name or URL) always raises: no later image would fare better.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from dlgpr_core.evidence.noun_phrases import (
    EXTRACTOR_VERSION,
    SPACY_MODEL,
    description_item,
    extract_noun_phrases,
    load_spacy,
    phrases_to_evidence,
    spacy_fingerprint,
)
from dlgpr_core.llm.chat import DEFAULT_OPENAI_BASE_URL, ChatBackendError, OpenAIChat
from dlgpr_core.mapdb.evidence import EvidenceItem

if TYPE_CHECKING:
    import httpx

    from dlgpr_core.llm.vlm import ChatBackend

log = logging.getLogger(__name__)

NAME = "teacher"

TEACHER_PROMPT = (
    "Describe this street-view image so that someone could recognise the place on another "
    "day. Mention only permanent, static elements: buildings (what kind of business or "
    "building each is, the names written on their signs, facade colours and materials, the "
    "number of floors, awnings, doors and roofs), other signs, street furniture (benches, "
    "lamp posts, phone booths, bus stops, mailboxes, fountains, statues, traffic lights), "
    "vegetation (trees, hedges), road markings and crosswalks, the pavement, and where these "
    "stand relative to each other. Never mention cars or other vehicles, people, animals, "
    "the weather, the light, shadows, the time of day or the season. Write plain sentences, "
    "100 to 200 words, with no lists and no headings."
)
"""The static-only instruction of the paper's Step 1, worded for one street-view image."""


class TeacherError(RuntimeError):
    """A teacher batch failed as a whole (strict mode, or every image refused)."""


@dataclass(frozen=True)
class Description:
    """What the teacher said about one image: the text, or why there is none."""

    text: str | None
    error: str = ""
    attempts: int = 1


@dataclass
class TeacherStats:
    """Counts over the annotator's lifetime (all batches)."""

    images: int = 0
    described: int = 0
    failed: int = 0
    http_retries: int = 0
    """Retries of 429 / 5xx / transport errors inside the HTTP client."""
    malformed: int = 0
    """Replies that were not a usable description (each retried or, at the end, failed)."""


@dataclass(frozen=True)
class TeacherFailure:
    """One image without evidence: its position among the images this annotator was given
    (counting from 0 over every batch), its size, and the last error."""

    image_number: int
    size: tuple[int, int]
    reason: str


class DescriptionBackend(Protocol):
    """Writes one description per image (or says why not); the annotator does the rest."""

    @property
    def name(self) -> str:
        """Identifies the model (and endpoint), for the annotator's version."""
        ...

    def describe(
        self, images: Sequence[Image.Image], prompt: str, stats: TeacherStats
    ) -> list[Description]:
        """One `Description` per image, in order; counts retries into `stats`."""
        ...


def clean_description(text: str) -> str:
    """Plain sentences from a reply that may come as Markdown (bullets, headings, bold)."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*+•]|\d+[.)]|#+)\s*", "", line)
        line = line.replace("**", "").replace("__", "").strip()
        if line:
            lines.append(line if line[-1] in ".!?:;" else line + ".")
    return " ".join(lines).strip()


def usable(text: object, min_words: int) -> str | None:
    """The cleaned description, or None when the reply is not one (empty, too short)."""
    if not isinstance(text, str):
        return None
    cleaned = clean_description(text)
    return cleaned if len(cleaned.split()) >= min_words else None


def image_data_url(image: Image.Image, max_side: int | None = 1024, quality: int = 90) -> str:
    """A base64 JPEG data URL, as OpenAI-compatible servers take images; larger images are
    scaled down first (token cost grows with size; street views gain nothing above ~1k)."""
    img = image.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _failure_kind(exc: ChatBackendError) -> str:
    """'refused' (a 4xx that retrying will not fix), 'exhausted' (the client already retried)
    or 'malformed' (an unusable 200 reply). `OpenAIChat` raises one exception type for all
    three, so its message is read; an unknown message counts as malformed (retried)."""
    msg = str(exc)
    if "refused the request" in msg:
        return "refused"
    if "failed after" in msg:
        return "exhausted"
    return "malformed"


class OpenAITeacherBackend:
    """An OpenAI-compatible chat-completions endpoint with images, through `OpenAIChat`."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_OPENAI_BASE_URL,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_reply_retries: int = 2,
        max_new_tokens: int = 400,
        temperature: float = 0.0,
        min_words: int = 5,
        max_side: int | None = 1024,
        concurrency: int = 4,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = 600.0,
        allow_insecure_key: bool | None = None,
    ) -> None:
        if max_reply_retries < 0 or concurrency < 1:
            raise ValueError("max_reply_retries must be >= 0 and concurrency >= 1")
        self._sleep = sleep
        self._lock = threading.Lock()
        self._stats: TeacherStats | None = None
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_reply_retries = max_reply_retries
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.min_words = min_words
        self.max_side = max_side
        self.concurrency = concurrency
        self.chat = OpenAIChat(
            model,
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            client=client,
            sleep=self._counted_sleep,
            deadline=deadline,
            allow_insecure_key=allow_insecure_key,
        )

    @property
    def name(self) -> str:
        return self.chat.name

    def _counted_sleep(self, seconds: float) -> None:
        # OpenAIChat sleeps exactly once before each of its retries (and logs it).
        with self._lock:
            if self._stats is not None:
                self._stats.http_retries += 1
        self._sleep(seconds)

    def _one(self, image: Image.Image, prompt: str, stats: TeacherStats) -> Description:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_data_url(image, self.max_side)}},
        ]
        conversation = [{"role": "user", "content": content}]
        last = ""
        for attempt in range(self.max_reply_retries + 1):
            try:
                reply = self.chat.generate([conversation], self.max_new_tokens, self.temperature)
                text = usable(reply[0][0] if reply and reply[0] else None, self.min_words)
                if text is not None:
                    return Description(text, attempts=attempt + 1)
                raw = reply[0][0] if reply and reply[0] else ""
                last = f"malformed reply (not a description): {raw[:120]!r}"
            except ChatBackendError as exc:
                kind = _failure_kind(exc)
                if kind != "malformed":
                    return Description(None, f"{kind}: {exc}", attempt + 1)
                last = f"malformed reply: {exc}"
            with self._lock:
                stats.malformed += 1
            if attempt < self.max_reply_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                log.warning("%s: %s; retry %d in %.1f s", self.name, last, attempt + 1, delay)
                self._sleep(delay)
        return Description(None, last, self.max_reply_retries + 1)

    def describe(
        self, images: Sequence[Image.Image], prompt: str, stats: TeacherStats
    ) -> list[Description]:
        self._stats = stats
        if self.concurrency == 1 or len(images) == 1:
            return [self._one(img, prompt, stats) for img in images]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            return list(pool.map(lambda img: self._one(img, prompt, stats), images))

    def close(self) -> None:
        self.chat.close()


class TransformersTeacherBackend:
    """Any transformers image-text-to-text model (hub id or local path), loaded on first use
    through `dlgpr_core.llm.vlm.load_vlm` and run in batches."""

    def __init__(
        self,
        model: str,
        *,
        adapter: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 400,
        max_reply_retries: int = 1,
        min_words: int = 5,
        vlm: ChatBackend | None = None,
    ) -> None:
        if batch_size < 1 or max_reply_retries < 0:
            raise ValueError("batch_size must be >= 1 and max_reply_retries >= 0")
        self.model = model
        self.adapter = adapter
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_reply_retries = max_reply_retries
        self.min_words = min_words
        self._vlm = vlm

    @property
    def name(self) -> str:
        return self.model if self.adapter is None else f"{self.model}+{self.adapter}"

    def _backend(self) -> ChatBackend:
        if self._vlm is None:
            from dlgpr_core.llm.vlm import load_vlm

            self._vlm = load_vlm(self.model, self.adapter, self.device, self.dtype)
        return self._vlm

    def describe(
        self, images: Sequence[Image.Image], prompt: str, stats: TeacherStats
    ) -> list[Description]:
        vlm = self._backend()
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        out: list[Description | None] = [None] * len(images)
        last: dict[int, str] = {}
        todo = list(range(len(images)))
        for attempt in range(self.max_reply_retries + 1):
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                try:
                    replies = vlm.generate(
                        [conversation] * len(chunk),
                        [[images[i]] for i in chunk],
                        max_new_tokens=self.max_new_tokens,
                        # greedy first; a retry samples, or it would say the same again
                        do_sample=attempt > 0,
                        seed=attempt if attempt > 0 else None,
                    )
                except Exception as exc:  # a model error fails these images, not the run
                    replies = [""] * len(chunk)
                    for i in chunk:
                        last[i] = f"generation failed: {type(exc).__name__}: {exc}"
                for i, reply in zip(chunk, replies, strict=True):
                    text = usable(reply, self.min_words)
                    if text is not None:
                        out[i] = Description(text, attempts=attempt + 1)
                    else:
                        stats.malformed += 1
                        last.setdefault(i, f"malformed reply (not a description): {reply[:120]!r}")
            todo = [i for i in todo if out[i] is None]
            if not todo:
                break
            if attempt < self.max_reply_retries:
                log.warning(
                    "%s: %d of %d replies unusable; retry %d with sampling",
                    self.name,
                    len(todo),
                    len(images),
                    attempt + 1,
                )
        return [
            d if d is not None else Description(None, last.get(i, "no reply"), attempt + 1)
            for i, d in enumerate(out)
        ]


@dataclass
class TeacherAnnotator:
    """`ImageAnnotator` over a `DescriptionBackend`: describe, extract, store."""

    backend: DescriptionBackend
    prompt: str = TEACHER_PROMPT
    confidence: float = 0.8
    """P(a phrase the teacher wrote holds for the image): how far the teacher is trusted."""
    attribute_confidence: float | None = None
    """P(value | thing visible) for attribute slots; default `confidence`."""
    keep_description: bool = True
    strict: bool = False
    name: str = NAME
    spacy_model: str = SPACY_MODEL
    stats: TeacherStats = field(default_factory=TeacherStats)
    failures: list[TeacherFailure] = field(default_factory=list)

    def __post_init__(self) -> None:
        for value in (self.confidence, self.attribute_confidence):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"confidences must be in [0, 1], got {value}")

    @property
    def version(self) -> str:
        """The model spec and a hash of everything else that changes what is stored."""
        settings = {
            "prompt": self.prompt,
            "confidence": self.confidence,
            "attribute_confidence": self.attribute_confidence,
            "keep_description": self.keep_description,
            "extractor": EXTRACTOR_VERSION,
            "spacy": spacy_fingerprint(self.spacy_model),
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{self.backend.name}#{digest[:12]}"

    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem]]:
        if not images:
            return []
        first = self.stats.images
        descriptions = self.backend.describe(images, self.prompt, self.stats)
        if len(descriptions) != len(images):
            raise TeacherError(
                f"{self.backend.name} gave {len(descriptions)} descriptions for {len(images)} "
                "images"
            )
        self.stats.images += len(images)
        failed = [
            TeacherFailure(first + i, images[i].size, d.error or "no description")
            for i, d in enumerate(descriptions)
            if d.text is None
        ]
        self.stats.failed += len(failed)
        self.stats.described += len(images) - len(failed)
        for f in failed:
            log.error(
                "teacher %s: image %d (%dx%d) gets no evidence: %s",
                self.backend.name,
                f.image_number,
                *f.size,
                f.reason,
            )
        self.failures.extend(failed)
        if failed and (self.strict or (len(failed) == len(images) and _all_refused(failed))):
            raise TeacherError(
                f"teacher {self.backend.name} failed on {len(failed)} of {len(images)} images "
                f"of this batch (first: {failed[0].reason}); nothing of the batch is stored"
            )
        texts = [d.text or "" for d in descriptions]
        ok = [i for i, d in enumerate(descriptions) if d.text is not None]
        phrases = extract_noun_phrases([texts[i] for i in ok], load_spacy(self.spacy_model))
        out: list[list[EvidenceItem]] = [[] for _ in images]
        for i, found in zip(ok, phrases, strict=True):
            items = phrases_to_evidence(found, self.confidence, self.attribute_confidence)
            if self.keep_description:
                items.append(description_item(texts[i], self.confidence))
            out[i] = items
        return out

    def report(self) -> str:
        """One line of counts, then the failed images (for a CLI to print after a run)."""
        s = self.stats
        lines = [
            f"teacher {self.backend.name}: {s.described} of {s.images} images described, "
            f"{s.failed} failed, {s.http_retries} HTTP retries, {s.malformed} malformed replies"
        ]
        lines += [
            f"  image {f.image_number} ({f.size[0]}x{f.size[1]}): {f.reason}"
            for f in self.failures[:20]
        ]
        return "\n".join(lines)


def _all_refused(failures: Sequence[TeacherFailure]) -> bool:
    """Every image refused: a wrong key, model or URL, which no later image will fix."""
    return all(f.reason.startswith("refused") for f in failures)


_ANNOTATOR_OPTIONS = frozenset(
    {"prompt", "confidence", "attribute_confidence", "keep_description", "strict", "name"}
)


def create_teacher_annotator(arg: str = "", **options: Any) -> TeacherAnnotator:
    """``openai:<model>[@<base url>]`` or a transformers model id / path (see the module
    docstring); annotator options (`prompt`, `confidence`, `attribute_confidence`,
    `keep_description`, `strict`, `name`) and backend options (`api_key_env`,
    `max_retries`, `backoff`, `concurrency`, ... / `adapter`, `device`, `dtype`,
    `batch_size`, ...) as keywords."""
    spec = arg.strip()
    if not spec:
        raise ValueError(
            "the teacher needs a model: teacher:openai:<model>@<base url> (e.g. "
            "teacher:openai:gpt-4o@https://api.openai.com/v1) or teacher:<transformers "
            "image-text-to-text model id or local directory>"
        )
    own = {k: v for k, v in options.items() if k in _ANNOTATOR_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in _ANNOTATOR_OPTIONS}
    backend: DescriptionBackend
    if spec.startswith("openai:"):
        model, sep, base_url = spec[len("openai:") :].partition("@")
        if not model:
            raise ValueError(f"no model name in {spec!r}; expected openai:<model>@<base url>")
        backend = OpenAITeacherBackend(
            model, base_url if sep and base_url else DEFAULT_OPENAI_BASE_URL, **rest
        )
    else:
        backend = TransformersTeacherBackend(spec, **rest)
    return TeacherAnnotator(backend, **own)
