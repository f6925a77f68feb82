"""The answer update: every candidate re-scored by how likely it makes the answers heard.

The paper only appends answers to the query text, so an answer helps as far as the text
encoder understands it (a "No" is nearly invisible to an embedding). The robot also knows,
from each place's images, what is probably there and what it looks like; reading each
answer as an observation of the asked probe, it applies Bayes' rule: belief is multiplied by
P(answer | place) from the same `AnswerModel` the questioner plans with. Since belief =
softmax(score / temperature), that is adding temperature * ln P to each score.

Answers it cannot read, and places without evidence, are not penalised: such a place gets,
for each answer, the median likelihood of the places that have evidence, so being unseen
neither helps nor hurts it. What the first description states ("a bank with a phone booth
beside it": both are there) is read the same way (`answers.described`), so the update starts
at round 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import Outcome, described, probe_of, read_answer
from dlgpr_core.dialogue.evidence_table import Rows, shared_table
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.state import DEFAULT_TEMPERATURE
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.report import PlaceHit


def observations(
    questions: Sequence[Question], answers: Sequence[str]
) -> list[tuple[Question, Outcome]]:
    """(probe, outcome) for every answer the robot could read."""
    out = []
    for question, answer in zip(questions, answers, strict=False):
        probe = probe_of(question)
        outcome = read_answer(question, answer) if probe is not None else None
        if probe is not None and outcome is not None:
            out.append((probe, outcome))
    return out


def given_by_category(
    model: AnswerModel, rows: Rows, seen: Sequence[tuple[Question, Outcome]]
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each observation's (P(it | the thing is there), P(it | not there)) for every row
    (`AnswerModel.given`), grouped by the thing asked about, in the order first observed:
    what the update multiplies (`AnswerModel.joint`) and the questioner conditions its
    presence on (`AnswerModel.presence_posterior`)."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for probe, outcome in seen:
        found = rows.block(probe.category, probe.attribute or "")
        values, names = found if found is not None else (None, ())
        out.setdefault(probe.category, []).append(
            model.given(len(rows.known), values, names, probe, outcome)
        )
    return out


class EvidenceUpdate:
    """A `Reranker` (see `session.py`) over the map's evidence; see the module docstring."""

    def __init__(
        self,
        evidence: EvidenceSource,
        temperature: float = DEFAULT_TEMPERATURE,
        answer_model: AnswerModel | None = None,
        use_description: bool = True,
    ) -> None:
        self.evidence = evidence
        self.temperature = temperature
        self.model = answer_model or AnswerModel.for_evidence(evidence)
        self.use_description = use_description
        self.table = shared_table(evidence, self.model)

    def log_likelihoods(
        self, place_ids: Sequence[str], seen: Sequence[tuple[Question, Outcome]]
    ) -> list[float]:
        """ln P(all the answers | place), per place (over the dense evidence table, so a
        few hundred places cost about a millisecond per answer). The answers about one
        thing share its presence (`AnswerModel.joint`); a place without evidence gets, per
        thing, the median of the places with evidence."""
        rows = self.table.rows(place_ids)
        total = np.zeros(len(place_ids))
        for category, given in given_by_category(self.model, rows, seen).items():
            ls = self.model.joint(rows.there(category), given)
            known = ls[rows.known]
            neutral = float(np.median(known)) if known.size else 1.0
            total += np.log(np.where(rows.known, ls, neutral))
        return [float(x) for x in total]

    def __call__(
        self,
        ranking: Sequence[PlaceHit],
        questions: Sequence[Question],
        answers: Sequence[str],
        description: str = "",
    ) -> list[PlaceHit]:
        """The ranking re-sorted by updated score (stable for ties), ranks renumbered.
        With `use_description`, what the description states counts as observations too."""
        seen = observations(questions, answers)
        if self.use_description:
            seen = described(description) + seen
        if not seen or not ranking:
            return list(ranking)
        logl = self.log_likelihoods([h.place_id for h in ranking], seen)
        scored = sorted(
            (
                (h.score + self.temperature * ll, i, h)
                for i, (h, ll) in enumerate(zip(ranking, logl, strict=True))
            ),
            key=lambda t: (-t[0], t[1]),
        )
        return [replace(h, score=s, rank=r + 1) for r, (s, _, h) in enumerate(scored)]
