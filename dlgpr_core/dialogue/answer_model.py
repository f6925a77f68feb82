"""How a person would answer a question about a place, given what the robot believes of it.

The robot never knows a candidate's facts; it has evidence from the candidate's images
(`dlgpr_core.evidence.knowledge.PlaceEvidence`: P(category visible), P(value | category)).
This model turns that into a distribution over the answers a person standing there would
give, in the outcome classes of `answers.py`. The questioner takes its expected information
gain over these distributions, and the answer update multiplies each candidate's belief by
the probability of the answer actually heard: one model for both, so the question chosen is
the one the update will use best.

For an attribute question about category c with value v, and the person's chance u of not
being able to tell that attribute:

    P(absent) = 1 - p_c
    P(unknown) = p_c * u
    P(yes) = p_c * (1 - u) * q(v)
    P(no, v') = p_c * (1 - u) * q(v')      (a person saying no names what it is instead)

A yes/no question has the same outcomes as the open one (a "no" names the value instead), so
both carry the same information. A presence question is present with p_c, absent otherwise.
`presence_columns` and `attribute_columns` give the same numbers for many places at once as
arrays (the questioner plans over hundreds of candidates). Likelihoods are floored
(`floor`): annotators and people both err, and one wrong answer must not rule the true
place out for ever.

Several answers about one thing share one unknown, whether it is there: "a bank", "its
facade is red" and "its sign says Union Savings" are p * P(red) * P(Union Savings), not
p * p*P(red) * p*P(Union Savings). So the answers about a category are combined by summing
its presence out once (`joint`: p * prod(floored P(answer | there)) + (1 - p) *
prod(floored P(answer | not there))), and the questioner plans the next answer with the
presence those answers imply (`presence_posterior`). With exact evidence (p is 0 or 1) this
changes nothing; with image evidence, a building the images barely show was counted against
its place once per answer about it.

A person standing at the place sees all around; the map's few views do not. A bus stop
behind the camera is in no image, so every annotator (the oracle's too) gives it presence
0, yet the person answers "yes, there is a bus stop". So the presence p the evidence gives
(P(some view shows the thing)) becomes P(the thing is there) = p + (1 - p) * r_c before it
is used (`there`), with r_c the share of places whose views miss a thing they have
(`UNSEEN_RATES`). Without it, one such answer cost the true place the likelihood floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlgpr_core.dialogue.answers import Outcome
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import values as slot_values

UNKNOWN_RATES: dict[str, float] = {"awning": 0.26}
"""P(a person cannot tell the attribute | the thing is there), measured on the training city
Trainville (seed 1) as the share of element attributes its descriptions leave unstated (only
"no awnings" is left unsaid, 25.8%); every other attribute gets `AnswerModel.default_unknown`."""

UNSEEN_RATES: dict[str, float] = {
    "bench": 0.119,
    "bus stop": 0.069,
    "crosswalk": 0.014,
    "fountain": 0.014,
    "mailbox": 0.121,
    "phone booth": 0.085,
    "statue": 0.015,
    "traffic light": 0.108,
    "tree": 0.061,
}
"""P(the place has the thing | none of its views shows it), measured on the four training
cities Trainville, Trainhaven, Trainmoor and Trainford (4,000 places, 4 views each) from
their elements and view regions (`dlgpr_core.evaluation.coverage.unseen_rates`); rates below
0.5% (buildings, which every view faces) are left out. A map captured otherwise (more views,
a wider field of view) has other rates: `dlgpr map coverage` records them in the map
(`AnswerModel.for_evidence`)."""


@dataclass(frozen=True)
class AnswerModel:
    """P(answer | place evidence) for structured probes; see the module docstring."""

    unknown: Mapping[str, float] = field(default_factory=lambda: dict(UNKNOWN_RATES))
    default_unknown: float = 0.03
    floor: float = 0.02
    unseen: Mapping[str, float] = field(default_factory=lambda: dict(UNSEEN_RATES))

    @classmethod
    def for_evidence(cls, evidence: EvidenceSource) -> AnswerModel:
        """The answer model of a map's evidence: its own coverage rates where the map
        records them (`dlgpr map coverage`), else `UNSEEN_RATES`. Every robot-side reader
        of the evidence (the questioner, the update) builds its model here, so they agree."""
        if evidence.unseen is None:
            return cls()
        return cls(unseen=dict(evidence.unseen))

    def u(self, attribute: str) -> float:
        return self.unknown.get(attribute, self.default_unknown)

    def there(self, category: str, p: float) -> float:
        """P(the thing is at the place) from P(some view shows it): p + (1 - p) * r_c
        (`UNSEEN_RATES`); the dense table builds its presence columns with it too."""
        r = self.unseen.get(category, 0.0)
        return p + (1.0 - p) * r

    def value_distribution(self, ev: PlaceEvidence, q: Question) -> dict[str, float]:
        """P(value | category) over the slot's values, filling what the annotator left out
        uniformly with the remaining mass."""
        attr = q.attribute or ""
        dist = dict(ev.dist(q.category, attr))
        known = slot_values(q.category, attr)
        unlisted = [v for v in known if v not in dist]
        rest = max(0.0, 1.0 - sum(dist.values()))
        if unlisted:
            share = (rest if dist else 1.0) / len(unlisted)
            for v in unlisted:
                dist[v] = share
        total = sum(dist.values())
        return {v: x / total for v, x in dist.items()} if total > 0 else {}

    def outcomes(self, ev: PlaceEvidence | None, q: Question) -> dict[Outcome, float]:
        """P(outcome) for a person at this place; a place without evidence (or a free-text
        question) gives one certain "unknown" outcome, i.e. no information."""
        if ev is None or q.kind == "free":
            return {("unknown",): 1.0}
        p = self.there(q.category, ev.p(q.category))
        if q.kind == "presence":
            return {("present",): p, ("absent",): 1.0 - p}
        u = self.u(q.attribute or "")
        out: dict[Outcome, float] = {("absent",): 1.0 - p, ("unknown",): p * u}
        known = p * (1.0 - u)
        dist = self.value_distribution(ev, q)
        if not dist:
            out[("unknown",)] += known
            return out
        if q.value is not None:
            out[("yes",)] = known * dist.get(q.value, 0.0)
            for v, x in dist.items():
                if v != q.value:
                    out[("no", v)] = known * x
        else:
            for v, x in dist.items():
                out[("value", v)] = known * x
        return out

    def presence_columns(self, p: np.ndarray, known: np.ndarray) -> np.ndarray:
        """(n, 3): P(present), P(absent) and, for a place without evidence, the one certain
        uninformative outcome, per place: `outcomes` of a presence question, many at once."""
        k = known.astype(np.float64)
        return np.stack([p * k, (1.0 - p) * k, 1.0 - k], axis=1)

    def attribute_columns(
        self, p: np.ndarray, values: np.ndarray, attribute: str, known: np.ndarray
    ) -> np.ndarray:
        """(n, 2 + V): P(absent), P(unknown) (a place without evidence: 1) and P(value j)
        per place, for an attribute question over V values whose P(value | visible) rows
        are `values` (n, V): `outcomes` of the open (or any yes/no) question, many at once."""
        k = known.astype(np.float64)
        u = self.u(attribute)
        absent = (1.0 - p) * k
        unknown = p * u * k + (1.0 - k)
        stated = (p * (1.0 - u) * k)[:, None] * values
        return np.concatenate([absent[:, None], unknown[:, None], stated], axis=1)

    def given(
        self,
        n: int,
        values: np.ndarray | None,
        names: tuple[str, ...],
        q: Question,
        observed: Outcome,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(r1, r0), each (n,): P(observed | the category is there) and P(observed | it is
        not), unfloored, for n places with evidence whose P(value | visible) rows for `q`'s
        slot are `values` (n, V) over `names` (None when the slot has no values). What the
        presence p adds is left to `joint`."""
        tag, named = observed[0], observed[1:]
        ones, zeros = np.ones(n), np.zeros(n)
        if tag == "present":
            return ones, zeros
        if tag == "absent":
            return zeros, ones
        if q.kind == "presence":
            return ones, ones  # "I don't know" to "is there ...?" says nothing
        u = self.u(q.attribute or "")
        if tag == "unknown":
            return ones * u, zeros
        if values is None or values.shape[1] == 0:
            return ones * (1.0 - u), zeros
        column = {v: j for j, v in enumerate(names)}

        def of(value: str) -> np.ndarray:
            j = column.get(value)
            return values[:, j] if j is not None else zeros

        if tag == "yes":
            q_v = of(q.value or "")
        elif named:
            q_v = np.max(np.stack([of(v) for v in named]), axis=0)
        elif tag == "no":
            q_v = 1.0 - of(q.value or "")
        else:  # a value was stated but not read: only "it is there" is learnt
            q_v = ones
        return (1.0 - u) * q_v, zeros

    def joint(self, p: np.ndarray, given: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """P(every observation of one category | place), (n,), from each observation's
        `given` (r1, r0): whether the thing is there is one fact per place, so it is summed
        out once, p * prod(floored r1) + (1 - p) * prod(floored r0), not once per answer.
        Multiplying single likelihoods instead would count a missed building's low p again
        in every answer about it ("a bank", "its facade is red", "its sign says ..." : p^3),
        which only uncertain evidence suffers; with exact evidence (p is 0 or 1) both agree,
        as they do for a single observation (`likelihood`, for many places at once)."""
        l1, l0 = self._products(p, given)
        return p * l1 + (1.0 - p) * l0

    def presence_posterior(
        self, p: np.ndarray, given: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """P(the category is there | the observations of it), (n,): what the questioner
        plans with once a person has spoken of the thing (said there is a bank: any place's
        bank is there, and an answer about its colour will not be "there is none")."""
        if not given:
            return p
        l1, l0 = self._products(p, given)
        there, not_there = p * l1, (1.0 - p) * l0
        total = there + not_there
        return np.where(total > 0, there / np.where(total > 0, total, 1.0), p)

    def _products(
        self, p: np.ndarray, given: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        f = self.floor
        l1, l0 = np.ones_like(p, dtype=np.float64), np.ones_like(p, dtype=np.float64)
        for r1, r0 in given:
            l1 = l1 * (f + (1.0 - f) * r1)
            l0 = l0 * (f + (1.0 - f) * r0)
        return l1, l0

    def likelihood(self, ev: PlaceEvidence | None, q: Question, observed: Outcome) -> float | None:
        """P(observed answer | this place), floored; None when the place has no evidence
        (the caller decides what an unknown place is worth): `joint_likelihood` of one
        observation, written out (the oracle questioner calls it per candidate and probe)."""
        if ev is None:
            return None
        p = self.there(q.category, ev.p(q.category))
        r1, r0 = self._given_one(ev, q, observed)
        return self.floor + (1.0 - self.floor) * (p * r1 + (1.0 - p) * r0)

    def joint_likelihood(
        self, ev: PlaceEvidence | None, seen: Sequence[tuple[Question, Outcome]]
    ) -> float | None:
        """P(all of `seen` | this place), one place at a time (the reference the arrays of
        the answer update are tested against): per category, its presence summed out once
        (`joint`); None when the place has no evidence."""
        if ev is None:
            return None
        by_category: dict[str, list[tuple[float, float]]] = {}
        for q, observed in seen:
            by_category.setdefault(q.category, []).append(self._given_one(ev, q, observed))
        f = self.floor
        total = 1.0
        for category, given in by_category.items():
            p = self.there(category, ev.p(category))
            l1 = l0 = 1.0
            for r1, r0 in given:
                l1 *= f + (1.0 - f) * r1
                l0 *= f + (1.0 - f) * r0
            total *= p * l1 + (1.0 - p) * l0
        return total

    def _given_one(self, ev: PlaceEvidence, q: Question, observed: Outcome) -> tuple[float, float]:
        """`given` for one place, from its `PlaceEvidence` (dictionaries, not arrays)."""
        tag, named = observed[0], observed[1:]
        if tag == "present":
            return 1.0, 0.0
        if tag == "absent":
            return 0.0, 1.0
        if q.kind == "presence":
            return 1.0, 1.0
        u = self.u(q.attribute or "")
        if tag == "unknown":
            return u, 0.0
        dist = self.value_distribution(ev, q)
        if not dist:
            return 1.0 - u, 0.0
        if tag == "yes":
            q_v = dist.get(q.value or "", 0.0)
        elif named:
            q_v = max(dist.get(v, 0.0) for v in named)
        elif tag == "no":
            q_v = 1.0 - dist.get(q.value or "", 0.0)
        else:  # a value was stated but not read: only "it is there" is learnt
            q_v = 1.0
        return (1.0 - u) * q_v, 0.0
