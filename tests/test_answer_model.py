"""The soft answer model and the reading of descriptions, against hand-computed values.

P(answer | a place's evidence) drives both the question choice and the answer update, so its
arithmetic is pinned here on a hand-made place: a bank seen with probability 0.8, whose
facade is red (0.6) or brown (0.3) given that it is there.
"""

from __future__ import annotations

import math

import pytest

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import described
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.questions import attribute_question, presence_question
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import values

BANK = PlaceEvidence(
    presence={"bank": 0.8}, values={("bank", "colour"): {"red": 0.6, "brown": 0.3}}
)
MODEL = AnswerModel(unknown={}, default_unknown=0.1, floor=0.02, max_values=6)


def test_outcome_distribution_by_hand() -> None:
    assert MODEL.outcomes(BANK, presence_question("bank")) == pytest.approx(
        {("present",): 0.8, ("absent",): 0.2}
    )
    out = MODEL.outcomes(BANK, attribute_question("bank", "colour", "red"))
    n_other = len(values("bank", "colour")) - 2  # facade colours the annotator left out
    assert n_other == 7
    rest = 0.1 / n_other  # the 10% it left, spread evenly
    known = 0.8 * 0.9  # there, and the person can tell
    assert out[("absent",)] == pytest.approx(0.2)
    assert out[("unknown",)] == pytest.approx(0.08)
    assert out[("yes",)] == pytest.approx(known * 0.6)
    assert out[("no", "brown")] == pytest.approx(known * 0.3)
    # brown and 5 of the 7 others are kept apart (max_values 6), 2 are lumped together
    assert sum(1 for k in out if k[0] == "no" and len(k) == 2) == 6
    assert out[("no",)] == pytest.approx(known * 2 * rest)
    assert sum(out.values()) == pytest.approx(1.0)
    assert MODEL.outcomes(None, presence_question("bank")) == {("unknown",): 1.0}


def test_likelihoods_by_hand() -> None:
    q = attribute_question("bank", "colour", "red")
    floor = 0.02

    def floored(x: float) -> float:
        return floor + (1 - floor) * x

    assert MODEL.likelihood(BANK, q, ("yes",)) == pytest.approx(floored(0.72 * 0.6))
    assert MODEL.likelihood(BANK, q, ("no", "brown")) == pytest.approx(floored(0.72 * 0.3))
    assert MODEL.likelihood(BANK, q, ("no",)) == pytest.approx(floored(0.72 * 0.4))
    assert MODEL.likelihood(BANK, q, ("absent",)) == pytest.approx(floored(0.2))
    assert MODEL.likelihood(BANK, q, ("unknown",)) == pytest.approx(floored(0.08))
    open_q = attribute_question("bank", "colour")
    assert MODEL.likelihood(BANK, open_q, ("value", "red")) == pytest.approx(floored(0.72 * 0.6))
    presence = presence_question("bank")
    assert MODEL.likelihood(BANK, presence, ("present",)) == pytest.approx(floored(0.8))
    assert MODEL.likelihood(BANK, presence, ("unknown",)) == pytest.approx(1.0)
    assert MODEL.likelihood(None, presence, ("present",)) is None


def test_expected_entropy_by_hand() -> None:
    red = PlaceEvidence({"bank": 1.0}, {("bank", "colour"): {"red": 1.0}})
    none = PlaceEvidence({}, {})
    source = EvidenceSource(lambda ids: {})
    ig = InfoGainQuestioner(source, answer_model=MODEL)
    # every outcome belongs to one candidate only: the answer settles the belief
    q = attribute_question("bank", "colour", "red")
    assert ig.expected_entropy(q, [red, none], [0.5, 0.5]) == pytest.approx(0.0)
    # a question neither place can answer differently leaves the entropy where it was
    tree = presence_question("tree")
    assert ig.expected_entropy(tree, [none, none], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_descriptions_are_read_as_observations() -> None:
    seen = {
        (q.kind, q.category, q.attribute, q.value, o)
        for q, o in described("I see a cafe with green awnings next to a bakery. No trees.")
    }
    assert seen == {
        ("presence", "cafe", None, None, ("present",)),
        ("presence", "bakery", None, None, ("present",)),
        ("presence", "tree", None, None, ("absent",)),
        ("attribute", "cafe", "awning", "green", ("yes",)),
    }
    assert described("") == []
