"""Questioners that need no LLM: expected-information-gain and a random-fact baseline.

Both only look at the dialogue state (current candidates, their belief, questions already
asked) and at the candidates' annotations, so they run in milliseconds on a CPU and give
the LLM questioner two reference points: a strong heuristic and chance.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.belief import entropy, softmax_belief
from dlgpr_core.dialogue.consistency import settled
from dlgpr_core.dialogue.knowledge import KnowledgeIndex, Outcome, PlaceKnowledge
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question
from dlgpr_core.dialogue.state import DialogueState


def candidate_questions(knowledge: Sequence[PlaceKnowledge]) -> list[Question]:
    """Presence, yes/no attribute and open attribute probes from the candidates' facts."""
    out: dict[tuple[str, str, str | None, str | None], Question] = {}
    for k in knowledge:
        for cat in k.categories:
            if cat != "street":
                q = presence_question(cat)
                out.setdefault(q.key, q)
        for (cat, attr), values in k.values.items():
            q = attribute_question(cat, attr)
            out.setdefault(q.key, q)
            for v in values:
                q = attribute_question(cat, attr, v)
                out.setdefault(q.key, q)
    return [out[key] for key in sorted(out, key=lambda x: tuple(str(p) for p in x))]


class InfoGainQuestioner:
    """Asks the question whose truthful answer most reduces the belief's expected entropy.

    Belief: softmax(score / temperature) over the top-k candidates (the engine's belief
    when `temperature` is None). Each candidate's answer to a probe is predicted exactly as
    the simulated user would give it (yes / no+value / absent / unknown / value), so the
    expected posterior entropy sum_a P(a) H(belief | a) is exact under that user model.
    """

    name = "info-gain"

    def __init__(
        self,
        places_by_id: Mapping[str, PlaceAnnotation],
        top_k: int = 10,
        temperature: float | None = None,
        open_questions: bool = True,
    ) -> None:
        self.top_k = top_k
        self.temperature = temperature
        self.open_questions = open_questions
        self._knowledge = KnowledgeIndex(places_by_id)

    def _belief(self, state: DialogueState) -> tuple[list[str], list[float]]:
        hits = state.candidates[: self.top_k]
        ids = [h.place_id for h in hits]
        if self.temperature is None and len(state.belief) >= len(ids):
            return ids, list(state.belief[: len(ids)])
        return ids, softmax_belief([h.score for h in hits], self.temperature or 0.05)

    def expected_entropy(
        self,
        question: Question,
        knowledge: Sequence[PlaceKnowledge | None],
        belief: Sequence[float],
    ) -> float:
        """sum over answers a of P(a) * H(belief restricted to candidates answering a)."""
        groups: dict[Outcome, list[float]] = defaultdict(list)
        for k, b in zip(knowledge, belief, strict=True):
            groups[k.outcome(question) if k is not None else ("unknown",)].append(b)
        total = sum(belief)
        return sum(sum(g) / total * entropy(g) for g in groups.values())

    def ask(self, state: DialogueState) -> Question | None:
        """The minimum-expected-entropy probe not asked yet and not already settled by an
        answer (ties: fixed probe order)."""
        ids, belief = self._belief(state)
        knowledge = [self._knowledge.get(pid) for pid in ids]
        asked = {q.key for q in state.questions}
        done = settled(state.questions, state.answers)
        pool = candidate_questions([k for k in knowledge if k is not None])
        best: tuple[float, Question] | None = None
        for q in pool:
            if q.key in asked or (q.is_open and not self.open_questions):
                continue
            if (q.category, None) in done or (q.category, q.attribute) in done:
                continue  # the user already said it is absent / what it looks like
            h = self.expected_entropy(q, knowledge, belief)
            if best is None or h < best[0] - 1e-12:
                best = (h, q)
        return None if best is None else best[1]


class RandomFactQuestioner:
    """Baseline: a random fact of a random top-k candidate, as a yes/no probe, never repeated."""

    name = "random"

    def __init__(
        self, places_by_id: Mapping[str, PlaceAnnotation], seed: int = 0, top_k: int = 10
    ) -> None:
        self.places = places_by_id
        self.top_k = top_k
        self.rng = random.Random(seed)

    def ask(self, state: DialogueState) -> Question | None:
        """Shuffles the candidates, then their facts, and returns the first new probe."""
        asked = {q.key for q in state.questions}
        ids = [h.place_id for h in state.candidates[: self.top_k]]
        self.rng.shuffle(ids)
        for pid in ids:
            place = self.places.get(pid)
            if place is None:
                continue
            category_of = {e.id: e.category for e in place.elements}
            facts = list(place.facts)
            self.rng.shuffle(facts)
            for f in facts:
                cat = category_of.get(f.element_id)
                if cat is None:
                    continue
                if f.attribute == "category":
                    q = presence_question(cat)
                else:
                    q = attribute_question(cat, f.attribute, f.value)
                if q.key not in asked:
                    return q
        return None
