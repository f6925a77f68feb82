"""Reading a person's answer: what it says about the probe that was asked.

The robot turns each answer into an `Outcome` of the probe, in the same classes its answer
model predicts (`answer_model.py`): present / absent for "is there a ...?", yes / no (with
the values the person named instead) for a yes/no attribute question, the values named for
an open question, and "unknown" for "I don't know". It reads with its own lexicon
(`dlgpr_core.dialogue.lexicon`); an answer it cannot read is None and changes nothing, which
the evaluation counts as a reading failure.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence

from dlgpr_core.dialogue.parse import Parsed, named_kinds
from dlgpr_core.dialogue.parse import parse_question as _parse_question
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.evidence.slots import values as slot_values

DONT_KNOW = "I don't know."

Outcome = tuple[str, ...]
"""An answer class: ("present",), ("absent",), ("yes",), ("no", values...),
("value", values...), ("unknown",). Two places giving equal outcomes are indistinguishable
by the question."""

_YES = re.compile(r"^\s*(yes|yeah|yep|yup|sure|correct|right|indeed|there is|there are)\b", re.I)
_NO = re.compile(
    r"^\s*(no|nope|nah|not|there is no|there are no|there isn't|there aren't|i don't think)\b",
    re.IGNORECASE,
)
_ABSENT = re.compile(
    r"\b(there (is|are|was|were)|there's|theres|theirs|there're) no\b|\bno (such|\w+ at all)\b"
    r"|\b(isn't|aren't|wasn't|weren't) (one|any)\b|\bdon't see (a|an|any)\b",
    re.IGNORECASE,
)
_UNKNOWN = re.compile(
    r"^\s*(i don't know|i do not know|don't know|not sure|no idea|i can't (say|tell|remember)"
    r"|i didn't (notice|see|look))",
    re.IGNORECASE,
)
_SENTENCES = re.compile(r"(?<=[.!?;])\s+|,\s+(?=(?:the|it|its|there)\b)", re.IGNORECASE)


@functools.lru_cache(maxsize=8192)
def parse_question(text: str) -> Parsed | None:
    """The keyword parser with the robot's lexicon, cached: answers are re-read each round."""
    return _parse_question(text)


def answer_polarity(answer: str) -> str | None:
    """ "yes", "no", or None (unknown, or an answer that only states a value)."""
    text = answer.strip()
    if not text or _UNKNOWN.match(text):
        return None
    if _NO.match(text):
        return "no"
    if _YES.match(text):
        return "yes"
    return None


def probe_of(question: Question) -> Question | None:
    """The structured probe behind a question (free text parsed), None when unreadable."""
    if question.kind != "free":
        return question
    parsed = parse_question(question.text)
    return None if parsed is None or parsed.negated else parsed.question


_PRONOUN = re.compile(
    r"^\s*(it's got|it has|it's|it is|it was|its|they're|they are|they have|that's)\b", re.I
)


def _about(sentence: str, category: str) -> str:
    """The sentence read as being about the asked category: people answer "It's red." or
    just "Red, I think." about the thing they were asked about."""
    m = _PRONOUN.match(sentence)
    if m:
        verb = "has" if m.group(1).lower().endswith(("has", "got", "have")) else "is"
        return f"the {category} {verb}{sentence[m.end() :]}"
    return f"the {category} {sentence}"


_HEDGES = re.compile(
    r",?\s*\b(i think|i'd say|i guess|i believe|probably|maybe|kind of|sort of|i suppose)\b",
    re.IGNORECASE,
)
_NAMED = re.compile(r"[\"“](.+?)[\"”]|\b(?:called|named|says|reads)\s+([A-Z][\w' .&-]+)")


def _misread_names(answer: str, category: str) -> list[str]:
    """Sign names a person said slightly wrong ("Union Saving"): the closest known name of
    that category, when close enough (people and speech recognisers both drop letters)."""
    known = [n for n in slot_values(category, "name")]
    out: list[str] = []
    for m in _NAMED.finditer(answer):
        said = (m.group(1) or m.group(2) or "").strip(" .,")
        close = difflib.get_close_matches(said, known, n=1, cutoff=0.75) if said else []
        if close and close[0] not in out:
            out.append(close[0])
    return out


def stated_values(answer: str, category: str, attribute: str) -> list[str]:
    """Values of `category`'s `attribute` that the answer's sentences state, in order."""
    out: list[str] = []
    for sentence in _SENTENCES.split(answer):
        # a leading "No," / "Yes." is the polarity, not part of the statement ("no awnings" is)
        words = re.sub(r"^\s*(yes|no|nope|yeah|yep)\b([,.!]\s*|\s*$)", "", sentence, flags=re.I)
        words = _HEDGES.sub("", words)
        if not words.strip():
            continue
        for reading in (words, _about(words, category)):
            parsed = parse_question(reading)
            # "It has no awnings." states the value none; any other negation states nothing
            if parsed is None or (parsed.negated and parsed.question.value != "none"):
                continue
            q = parsed.question
            if (q.category, q.attribute) == (category, attribute) and q.value:
                if q.value not in out:
                    out.append(q.value)
                break
    if attribute == "name" and not out:
        out = _misread_names(answer, category)
    return out


def read_answer(question: Question, answer: str) -> Outcome | None:
    """What `answer` says about the probe of `question`; None when it cannot be read."""
    probe = probe_of(question)
    text = answer.strip()
    if probe is None or not text:
        return None
    if _UNKNOWN.match(text):
        return ("unknown",)
    polarity = answer_polarity(text)
    if probe.kind == "presence":
        if polarity == "yes":
            return ("present",)
        return ("absent",) if polarity == "no" or _ABSENT.search(text) else None
    if _ABSENT.search(text):
        return ("absent",)
    values = stated_values(text, probe.category, probe.attribute or "")
    if probe.value is not None:
        if polarity == "yes":
            return ("yes",)
        if polarity == "no":
            return ("no", *[v for v in values if v != probe.value])
        if values:
            return ("yes",) if probe.value in values else ("no", *values)
        return None
    if values:
        return ("value", *values)
    # "No." to "what is it like?": there is nothing to be like
    return ("absent",) if polarity == "no" else None


def settled(questions: Sequence[Question], answers: Sequence[str]) -> set[tuple[str, str | None]]:
    """(category, attribute) pairs the answers already settled; (category, None) when the
    person said the category is not there. Asking about them again only wastes a turn."""
    out: set[tuple[str, str | None]] = set()
    for question, answer in zip(questions, answers, strict=False):
        probe = probe_of(question)
        outcome = read_answer(question, answer) if probe is not None else None
        if probe is None or outcome is None or outcome == ("unknown",):
            continue
        if outcome == ("absent",):
            out.add((probe.category, None))
        elif probe.kind == "presence":
            continue  # "yes, there is one": its attributes are still open
        else:
            out.add((probe.category, probe.attribute))
    return out


_CLAUSES = re.compile(
    r"[.;,!?]|\b(?:and|next to|beside|besides|across from|opposite|near|behind|in front of"
    r"|to the (?:left|right) of|between)\b",
    re.IGNORECASE,
)


def _clauses(text: str, names: Mapping[str, Iterable[str]]) -> list[str]:
    """The text cut at `_CLAUSES`, a sign name kept whole as written ("St. Mary's" has a
    full stop, "Bloom and Petal" an "and")."""
    kept: list[str] = []

    def keep(m: re.Match[str]) -> str:
        kept.append(m.group(0))
        return f"\x00{len(kept) - 1}\x00"

    phrases = sorted({p for ps in names.values() for p in ps}, key=len, reverse=True)
    if phrases:
        either = "|".join(re.escape(p) for p in phrases)
        text = re.sub(rf"(?<!\w)(?:{either})(?!\w)", keep, text, flags=re.IGNORECASE)
    return [
        re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], c)
        for c in _CLAUSES.split(text)
        if c
    ]


def described(description: str) -> list[tuple[Question, Outcome]]:
    """What a description states, as (probe, outcome) observations: every category it
    names is there (unless said not to be: "no trees"), and every clause about one
    category that the parser reads as a statement ("a red brick bank") is a "yes" to that
    value. People describe before they are asked; the robot listens the same way."""
    from dlgpr_core.dialogue.lexicon import ROBOT_LEXICON
    from dlgpr_core.dialogue.questions import presence_question
    from dlgpr_core.synth.terms import find_terms

    out: list[tuple[Question, Outcome]] = []
    text = description.strip()
    if not text:
        return out
    for category in sorted(find_terms(text, ROBOT_LEXICON.categories) | named_kinds(text)):
        words = "|".join(re.escape(w) for w in ROBOT_LEXICON.categories[category])
        negated = re.search(rf"\b(no|not any|without)\s+(\w+\s+)?({words})", text, re.I)
        out.append((presence_question(category), ("absent",) if negated else ("present",)))
    for clause in _clauses(text, ROBOT_LEXICON.names):
        parsed = parse_question(clause) if clause and clause.strip() else None
        if parsed is None or parsed.negated or parsed.question.kind != "attribute":
            continue
        if parsed.question.value is not None:
            out.append((parsed.question, ("yes",)))
    return out
