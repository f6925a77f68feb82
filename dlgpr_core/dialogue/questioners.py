"""Questioners that need no LLM: expected-information-gain and a random baseline.

Both look only at the dialogue state (current candidates, their belief, the questions
already asked) and at the candidates' evidence, derived from the map's images
(`dlgpr_core.evidence`), never at a data set's ground truth. They run in milliseconds on a
CPU and give the LLM questioners two reference points: a strong heuristic and chance.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import Outcome, settled
from dlgpr_core.dialogue.belief import entropy, softmax_belief
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question
from dlgpr_core.dialogue.state import DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import STREET, slots

MIN_PRESENCE = 0.2
"""A category a candidate shows with at least this probability is worth asking about."""
MIN_VALUE = 0.15
"""A value at least this likely (given its category) is worth a yes/no question."""


def candidate_questions(evidence: Sequence[PlaceEvidence]) -> list[Question]:
    """Presence, yes/no attribute and open attribute probes about what the candidates'
    images show (fixed order, so ties between equally good probes are deterministic)."""
    out: dict[tuple[str, str, str | None, str | None], Question] = {}

    def add(q: Question) -> None:
        out.setdefault(q.key, q)

    for ev in evidence:
        cats = [c for c, p in ev.presence.items() if p >= MIN_PRESENCE]
        for cat in [*cats, STREET]:
            slot = slots().get(cat)
            if slot is None:
                continue
            if cat != STREET:
                add(presence_question(cat))
            for attr in slot.attributes:
                add(attribute_question(cat, attr))
                for value, q in ev.dist(cat, attr).items():
                    if q >= MIN_VALUE:
                        add(attribute_question(cat, attr, value))
    return [out[key] for key in sorted(out, key=lambda x: tuple(str(p) for p in x))]


class InfoGainQuestioner:
    """Asks the question whose answer most reduces the belief's expected entropy.

    Belief: the state's (softmax(score / temperature) over the top-k candidates). Each
    candidate's answer to a probe is a distribution (`AnswerModel.outcomes` over its image
    evidence), so the expected posterior entropy sum_a P(a) H(belief | a) accounts for
    what the robot is unsure of, and the answer update (`evidence_update.py`) uses the same
    model.
    """

    name = "info-gain"

    def __init__(
        self,
        evidence: EvidenceSource,
        top_k: int = 10,
        temperature: float | None = None,
        open_questions: bool = True,
        answer_model: AnswerModel | None = None,
    ) -> None:
        self.evidence = evidence
        self.top_k = top_k
        self.temperature = temperature
        self.open_questions = open_questions
        self.model = answer_model or AnswerModel()

    def _belief(self, state: DialogueState) -> tuple[list[str], list[float]]:
        hits = state.candidates[: self.top_k]
        ids = [h.place_id for h in hits]
        if self.temperature is None and len(state.belief) >= len(ids):
            return ids, list(state.belief[: len(ids)])
        return ids, softmax_belief([h.score for h in hits], self.temperature or 0.05)

    def expected_entropy(
        self,
        question: Question,
        evidence: Sequence[PlaceEvidence | None],
        belief: Sequence[float],
    ) -> float:
        """sum over answers a of P(a) * H(belief | a), P(a | place) from the answer model."""
        joint: dict[Outcome, list[float]] = defaultdict(lambda: [0.0] * len(belief))
        for i, (ev, b) in enumerate(zip(evidence, belief, strict=True)):
            for outcome, p in self.model.outcomes(ev, question).items():
                joint[outcome][i] += b * p
        total = sum(belief)
        return sum(sum(g) / total * entropy(g) for g in joint.values() if sum(g) > 0)

    def ask(self, state: DialogueState) -> Question | None:
        """The minimum-expected-entropy probe not asked yet and not already settled by an
        answer (ties: fixed probe order)."""
        ids, belief = self._belief(state)
        evidence = self.evidence.get_many(ids)
        asked = {q.key for q in state.questions}
        done = settled(state.questions, state.answers)
        pool = candidate_questions([e for e in evidence if e is not None])
        best: tuple[float, Question] | None = None
        for q in pool:
            if q.key in asked or (q.is_open and not self.open_questions):
                continue
            if (q.category, None) in done or (q.category, q.attribute) in done:
                continue  # the person already said it is absent / what it looks like
            h = self.expected_entropy(q, evidence, belief)
            if best is None or h < best[0] - 1e-12:
                best = (h, q)
        return None if best is None else best[1]


class RandomQuestioner:
    """Baseline: a random thing a random top-k candidate shows, as a yes/no probe about its
    likeliest look (or its presence), never repeated."""

    name = "random"

    def __init__(self, evidence: EvidenceSource, seed: int = 0, top_k: int = 10) -> None:
        self.evidence = evidence
        self.top_k = top_k
        self.rng = random.Random(seed)

    def ask(self, state: DialogueState) -> Question | None:
        """Shuffles the candidates, then what they show, and returns the first new probe."""
        asked = {q.key for q in state.questions}
        ids = [h.place_id for h in state.candidates[: self.top_k]]
        self.rng.shuffle(ids)
        for ev in self.evidence.get_many(ids):
            if ev is None:
                continue
            probes = [presence_question(c) for c, p in sorted(ev.presence.items()) if p >= 0.5]
            for (cat, attr), dist in sorted(ev.values.items()):
                if dist and (cat == STREET or ev.p(cat) >= 0.5):
                    probes.append(attribute_question(cat, attr, max(dist, key=dist.__getitem__)))
            self.rng.shuffle(probes)
            for q in probes:
                if q.key not in asked:
                    return q
        return None
