"""Re-ranking by agreement between the user's answers and each place's annotated facts.

The paper only appends answers to the query text, so an answer helps exactly as much as the
retriever understands it: a "No" is nearly invisible to a text embedding. A map built from
DQ-Cities/SynthCities also carries each place's annotations, and a robot can use them the
way a person would: a place whose facts contradict an answer is unlikely, whatever its
embedding score. This is a Bayesian update with a noisy-answer likelihood: a contradicted
place's belief is multiplied by `epsilon`, i.e. its score is lowered by
`temperature * ln(1 / epsilon)` (belief = softmax(score / temperature)). Places the facts do
not settle, answers that are "I don't know", and questions that cannot be read as a probe
change nothing, so the update is a no-op on maps without annotations.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.knowledge import DONT_KNOW, KnowledgeIndex, PlaceKnowledge
from dlgpr_core.dialogue.parse import Parsed
from dlgpr_core.dialogue.parse import parse_question as _parse_question
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.mapdb.report import PlaceHit

_YES = re.compile(r"^\s*(yes|yeah|yep|correct|right|there is|there are)\b", re.IGNORECASE)
_NO = re.compile(r"^\s*(no|nope|not|there is no|there are no|there isn't|there aren't)\b", re.I)


@functools.lru_cache(maxsize=8192)
def parse_question(text: str) -> Parsed | None:
    """The keyword parser, cached: the re-ranker reads the same answer once per candidate."""
    return _parse_question(text)


def answer_polarity(answer: str) -> str | None:
    """ "yes", "no", or None (unknown, or an open answer that states a value)."""
    text = answer.strip()
    if not text or text.lower().startswith(DONT_KNOW.lower().rstrip(".")):
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


def settled(questions: Sequence[Question], answers: Sequence[str]) -> set[tuple[str, str | None]]:
    """(category, attribute) pairs the answers already settled; (category, None) when the
    user said the category is not there. Asking about them again only wastes a turn."""
    out: set[tuple[str, str | None]] = set()
    for question, answer in zip(questions, answers, strict=False):
        probe = probe_of(question)
        if probe is None or answer.strip().lower().startswith(DONT_KNOW.lower().rstrip(".")):
            continue
        polarity = answer_polarity(answer)
        if probe.kind == "presence":
            if polarity == "no":
                out.add((probe.category, None))
        elif re.search(r"\bthere (is|are) no\b", answer, re.IGNORECASE):
            out.add((probe.category, None))
        else:
            out.add((probe.category, probe.attribute))
    return out


def consistent(knowledge: PlaceKnowledge, question: Question, answer: str) -> bool | None:
    """Whether a place with these facts could have given `answer`; None when it cannot tell."""
    probe = probe_of(question)
    if probe is None:
        return None
    outcome = knowledge.outcome(probe)
    tag = outcome[0]
    if tag == "unknown":
        return None
    polarity = answer_polarity(answer)
    if probe.kind == "presence" or (probe.value is not None):
        if polarity is None:
            return None
        positive = tag in ("present", "yes")
        if tag == "absent" and probe.kind == "attribute":
            positive = False
        return positive == (polarity == "yes")
    # An open question ("What colour is the bank?"): the answer states values. The place's
    # own answer, word for word, is consistent; otherwise the answer is read back as a
    # probe (the keyword parser also reads statements) and the place's outcome for that
    # probe decides. Anything the parser cannot pin to one value of this attribute is left
    # undecided, so an unusual wording never penalises a place.
    if _normalise(answer) == _normalise(knowledge.answer(probe)):
        return True
    if polarity == "no":
        return tag == "absent"
    stated = parse_question(answer)
    if stated is None or stated.negated:
        return None
    sq = stated.question
    if (sq.category, sq.attribute) != (probe.category, probe.attribute) or sq.value is None:
        return None
    back = knowledge.outcome(sq)[0]
    return True if back == "yes" else False if back in ("no", "absent") else None


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class FactConsistencyReranker:
    """Lowers the score of places whose annotated facts contradict an answer.

    `epsilon` is the probability that a truthful user still gives a contradicting answer
    (wrong annotation, misheard question); `temperature` must be the belief temperature of
    the dialogue so the penalty is exactly a factor `epsilon` on the belief.
    """

    def __init__(
        self,
        places_by_id: Mapping[str, PlaceAnnotation],
        epsilon: float = 0.05,
        temperature: float = 0.05,
    ) -> None:
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        self.places_by_id = places_by_id
        self.epsilon = epsilon
        self.temperature = temperature
        self._knowledge = KnowledgeIndex(places_by_id)

    @property
    def penalty(self) -> float:
        """Score units removed per contradicted answer."""
        return self.temperature * math.log(1.0 / self.epsilon)

    def __call__(
        self, ranking: Sequence[PlaceHit], questions: Sequence[Question], answers: Sequence[str]
    ) -> list[PlaceHit]:
        """The ranking re-sorted by penalised score (stable for ties), ranks renumbered."""
        if not questions:
            return list(ranking)
        pairs = list(zip(questions, answers, strict=False))
        scored: list[tuple[float, int, PlaceHit]] = []
        for i, hit in enumerate(ranking):
            k = self._knowledge.get(hit.place_id)
            n_bad = 0
            if k is not None:
                n_bad = sum(consistent(k, q, a) is False for q, a in pairs)
            scored.append((hit.score - n_bad * self.penalty, i, hit))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [replace(h, score=s, rank=r + 1) for r, (s, _, h) in enumerate(scored)]
