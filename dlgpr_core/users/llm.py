"""Simulated user backed by a chat LLM that reads only the target's fine-grained description.

This is the paper's answerer (GPT-4o over the description, Sec. 5). An LLM answers free
questions that the keyword parser of `FactUser` cannot, but it may also hallucinate, and a
wrong fact appended to the retrieval query poisons both the benchmark and the GRPO reward.
So every reply goes through a grounding guard: a colour, material or object category that
the description never mentions cannot be asserted; such a reply becomes "I don't know.".
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import cache
from typing import Any

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.answers import DONT_KNOW
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.llm.chat import ChatModel
from dlgpr_core.synth.rephrase.lexicon import COLOUR_SYNONYMS, MATERIAL_SYNONYMS, category_lexicon
from dlgpr_core.synth.terms import find_terms

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are standing at a street place and answer questions about it. Everything you know "
    "about the place is the description below; treat anything it does not mention as "
    "unknown. Answer briefly and truthfully in one short sentence that restates the fact, "
    'e.g. "The bank has a red facade." or "There is no fountain.". If the description does '
    "not settle the question, reply exactly: I don't know.\n\n"
    "Description: {description}"
)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_PREFIX = re.compile(
    r"^\s*(?:\*\*)?(?:answer|a|assistant|user|witness|response|reply)\s*(?:\*\*)?\s*[:\-]\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»*"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_UNKNOWN = re.compile(
    r"\b(?:i\s+(?:do\s+not|don't|dont)\s+know|not\s+(?:mentioned|specified|stated)|"
    r"(?:does\s+not|doesn't|do\s+not|don't)\s+(?:say|mention|specify)|cannot\s+tell|"
    r"can't\s+tell|no\s+information|unknown|not\s+sure)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"\b(?:no|not|never|nor|without|none)\b|n't\b", re.IGNORECASE)


@cache
def _lexicons() -> dict[str, dict[str, tuple[str, ...]]]:
    return {
        "colour": dict(COLOUR_SYNONYMS),
        "material": dict(MATERIAL_SYNONYMS),
        "category": category_lexicon(),
    }


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(w) for w in phrase.lower().split())
    return re.compile(rf"(?<![\w-]){body}(?:s|es)?(?![\w-])")


def _negated_mentions_only(sentence: str, phrases: tuple[str, ...]) -> bool:
    """Every mention of the category is closely preceded by a negation ("there is no kiosk").

    Absent categories are truly absent (the descriptions list every static element), so a
    denial is a true statement even though the description never names the category."""
    low = sentence.lower()
    seen = False
    for phrase in phrases:
        for m in _phrase_pattern(phrase).finditer(low):
            seen = True
            before = low[: m.start()].split()[-4:]
            if not _NEGATION.search(" ".join(before)):
                return False
    return seen


def ungrounded_terms(answer: str, description: str) -> list[str]:
    """``kind:key`` of each colour, material or category the answer asserts but the
    description never mentions (matching is by lexicon key, so synonyms count as the same)."""
    out: list[str] = []
    for kind, lexicon in _lexicons().items():
        said = find_terms(answer, lexicon)
        known = find_terms(description, lexicon)
        for key in sorted(said - known):
            if kind == "category" and all(
                _negated_mentions_only(s, lexicon[key])
                for s in _SENTENCE_END.split(answer)
                if find_terms(s, {key: lexicon[key]})
            ):
                continue
            out.append(f"{kind}:{key}")
    return out


def clean_reply(text: str, max_sentences: int = 2, max_words: int = 40) -> tuple[str, bool]:
    """The reply as one or two plain sentences, and whether anything was cut off.

    Models wrap answers in think blocks, "Answer:" prefixes, quotes or several paragraphs;
    the retrieval query wants one short factual sentence."""
    text = _THINK.sub(" ", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    trimmed = len(lines) > 1
    text = lines[0] if lines else ""
    text = _PREFIX.sub("", text).strip().strip(_QUOTES).strip()
    text = _PREFIX.sub("", text).strip().strip(_QUOTES).strip()
    if not text:
        return "", trimmed
    sentences = [s.strip().strip(_QUOTES).strip() for s in _SENTENCE_END.split(text)]
    sentences = [s for s in sentences if s]
    if len(sentences) > max_sentences:
        sentences, trimmed = sentences[:max_sentences], True
    words = " ".join(sentences).split()
    if len(words) > max_words:
        words, trimmed = words[:max_words], True
    out = " ".join(words).rstrip(",;:")
    if out and out[-1] not in ".!?":
        out += "."
    return out, trimmed


class LLMUser:
    """Answers from one place's fine-grained description through any `ChatModel`.

    ``stats`` counts questions, "I don't know." replies, empty replies, trimmed replies and
    replies the grounding guard replaced (``ungrounded``), so an evaluation can report how
    often the answerer had to be overruled.
    """

    def __init__(
        self,
        place: PlaceAnnotation | str,
        chat: ChatModel,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = 0,
        max_sentences: int = 2,
        max_words: int = 40,
    ) -> None:
        self.description = place if isinstance(place, str) else place.description
        if not self.description.strip():
            raise ValueError("LLMUser needs a non-empty description")
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.stats: Counter[str] = Counter()

    def conversation(self, question: str) -> list[dict[str, Any]]:
        """The chat sent for one question (exposed so that prompts can be inspected)."""
        return [
            {"role": "system", "content": SYSTEM_PROMPT.format(description=self.description)},
            {"role": "user", "content": question},
        ]

    def postprocess(self, reply: str) -> str:
        """Clean a raw reply and apply the grounding guard (counted in ``stats``)."""
        text, trimmed = clean_reply(reply, self.max_sentences, self.max_words)
        if trimmed:
            self.stats["trimmed"] += 1
        if not text:
            self.stats["empty"] += 1
            self.stats["dont_know"] += 1
            return DONT_KNOW
        if _UNKNOWN.search(text):
            self.stats["dont_know"] += 1
            return DONT_KNOW
        bad = ungrounded_terms(text, self.description)
        if bad:
            log.info("grounding guard: %r asserts %s, absent from the description", text, bad)
            self.stats["ungrounded"] += 1
            self.stats["dont_know"] += 1
            return DONT_KNOW
        return text

    def answer(self, question: Question | str) -> str:
        """A short truthful sentence, or exactly "I don't know."."""
        text = question.text if isinstance(question, Question) else question
        self.stats["questions"] += 1
        if not text.strip():
            self.stats["dont_know"] += 1
            return DONT_KNOW
        reply = self.chat.generate(
            [self.conversation(text.strip())],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            n=1,
            seed=self.seed,
        )[0][0]
        return self.postprocess(reply)
