"""Questioners that need no LLM: expected-information-gain and a random baseline.

Both look only at the dialogue state (current candidates, their belief, the questions
already asked) and at the candidates' evidence, derived from the map's images
(`dlgpr_core.evidence`), never at a data set's ground truth. They run in milliseconds on a
CPU and give the LLM questioners two reference points: a strong heuristic and chance.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import described, settled
from dlgpr_core.dialogue.belief import softmax_belief
from dlgpr_core.dialogue.evidence_table import Rows, shared_table
from dlgpr_core.dialogue.evidence_update import given_by_category, observations
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question
from dlgpr_core.dialogue.state import DEFAULT_TEMPERATURE, DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import STREET

Objective = Literal["entropy", "correct"]
"""What a question is chosen to minimise: the expected entropy of the belief after the answer
("entropy", classic information gain), or the expected chance that the belief's best
candidate is wrong after it ("correct")."""


class InfoGainQuestioner:
    """Asks the question whose answer most reduces the belief's expected entropy.

    Belief: the state's (softmax(score / temperature) over its candidates, computed once by
    the session), so the questioner plans over exactly what the dialogue believes; `top_k`
    only narrows that (None: every candidate the belief covers). Each candidate's answer to a
    probe is a distribution (the `AnswerModel` over its image evidence), so the expected
    posterior entropy sum_a P(a) H(belief | a) accounts for what the robot is unsure of, and
    the answer update (`evidence_update.py`) uses the same model. Every probe the ontology
    allows is scored at once over a dense evidence table (`evidence_table.py`): with a few
    hundred candidates a question costs milliseconds.
    """

    name = "info-gain"

    def __init__(
        self,
        evidence: EvidenceSource,
        top_k: int | None = None,
        temperature: float | None = None,
        open_questions: bool = True,
        answer_model: AnswerModel | None = None,
        objective: Objective = "entropy",
    ) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if objective not in ("entropy", "correct"):
            raise ValueError(f"objective must be 'entropy' or 'correct', got {objective!r}")
        self.evidence = evidence
        self.top_k = top_k
        self.temperature = temperature
        self.open_questions = open_questions
        self.model = answer_model or AnswerModel.for_evidence(evidence)
        self.objective = objective
        self.table = shared_table(evidence, self.model)

    def _belief(self, state: DialogueState) -> tuple[list[str], np.ndarray]:
        """The places planned over and their belief (renormalised when narrowed)."""
        hits = state.candidates[: self.top_k] if self.top_k else state.candidates
        ids = [h.place_id for h in hits]
        if self.temperature is None and len(state.belief) >= len(ids):
            belief = np.asarray(state.belief[: len(ids)], dtype=np.float64)
        else:
            belief = np.asarray(
                softmax_belief([h.score for h in hits], self.temperature or DEFAULT_TEMPERATURE),
                np.float64,
            )
        total = belief.sum()
        return ids, belief / total if total > 0 else belief

    def _score(self, joint: np.ndarray) -> float:
        """The objective of one question from its joint (places x outcomes) P(place, answer)."""
        mass = joint.sum(axis=0)
        keep = mass > 0
        joint, mass = joint[:, keep], mass[keep]
        total = float(mass.sum())
        if total <= 0:
            return 0.0
        if self.objective == "correct":
            return 1.0 - float(joint.max(axis=0).sum()) / total
        q = joint / mass
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=0)
        return float((mass * h).sum()) / total

    def _columns(
        self, q: Question, rows: Rows, presence: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """P(outcome | place) of probe `q` for every row (places x outcomes); `presence`
        replaces the rows' P(there) of the things already spoken of (`_presence`)."""
        p = (presence or {}).get(q.category)
        if p is None:
            p = rows.there(q.category)
        if q.kind == "presence":
            return self.model.presence_columns(p, rows.known)
        found = rows.block(q.category, q.attribute or "")
        if found is None:
            return np.ones((len(rows.known), 1))  # a probe outside the ontology tells nothing
        return self.model.attribute_columns(p, found[0], q.attribute or "", rows.known)

    def expected_entropy(
        self,
        question: Question,
        evidence: Sequence[PlaceEvidence | None],
        belief: Sequence[float],
    ) -> float:
        """sum over answers a of P(a) * H(belief | a), P(a | place) from the answer model
        (the questioner's objective for places given directly, e.g. in a test)."""
        table = Rows.stack(self.table.layout, [self.table.row(ev) for ev in evidence])
        b = np.asarray(belief, dtype=np.float64)
        return self._score(b[:, None] * self._columns(question, table))

    def probes(self, state: DialogueState) -> list[Question]:
        """Every probe worth scoring: presence and open attribute questions (or yes/no ones
        without open questions) not asked yet and not settled by an answer, in ontology
        order (ties between equally good probes go to the first)."""
        asked = {q.key for q in state.questions}
        done = settled(state.questions, state.answers)
        out: list[Question] = []
        lay = self.table.layout
        for c in lay.categories:
            if (c, None) not in done:
                out.append(presence_question(c))
        for c, a, _ in lay.pairs:
            if (c, None) in done or (c, a) in done:
                continue
            out.append(attribute_question(c, a))
        return [q for q in out if q.key not in asked]

    def ask(self, state: DialogueState) -> Question | None:
        """The probe with the lowest objective (see `probes`); None when nothing is left."""
        ids, belief = self._belief(state)
        if not ids:
            return None
        rows = self.table.rows(ids)
        presence = self._presence(state, rows)
        best: tuple[float, Question] | None = None
        for q in self.probes(state):
            score = self._score(belief[:, None] * self._columns(q, rows, presence))
            if best is None or score < best[0] - 1e-12:
                best = (score, q)
        if best is None:
            return None
        if self.open_questions:
            return best[1]
        return self._yes_no(best[1], state, rows, belief, presence)

    def _presence(self, state: DialogueState, rows: Rows) -> dict[str, np.ndarray]:
        """Per thing the person has spoken of (in the description or an answer), each
        candidate's P(it is there | what was said): once "a bank" was said, an answer about
        the bank's colour will not be "there is none" at any candidate, and planning as if
        it could would overrate the question (`AnswerModel.presence_posterior`)."""
        seen = described(state.d0) + observations(state.questions, state.answers)
        return {
            category: self.model.presence_posterior(rows.there(category), given)
            for category, given in given_by_category(self.model, rows, seen).items()
        }

    def _yes_no(
        self,
        q: Question,
        state: DialogueState,
        rows: Rows,
        belief: np.ndarray,
        presence: Mapping[str, np.ndarray],
    ) -> Question:
        """The open question `q` as a yes/no one about its likeliest value (the same
        outcomes, hence the same information, in a form some users prefer)."""
        if q.kind != "attribute" or q.value is not None:
            return q
        cols = self._columns(q, rows, presence)[:, 2:]
        found = self.table.layout.block(q.category, q.attribute or "")
        vals = found[1] if found is not None else ()
        asked = {x.key for x in state.questions}
        for j in np.argsort(-(belief[:, None] * cols).sum(axis=0), kind="stable"):
            yes_no = attribute_question(q.category, q.attribute or "", vals[int(j)])
            if yes_no.key not in asked:
                return yes_no
        return q


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
