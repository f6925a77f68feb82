"""The soft answer model and the reading of descriptions, against hand-computed values.

P(answer | a place's evidence) drives both the question choice and the answer update, so its
arithmetic is pinned here on a hand-made place: a bank seen with probability 0.8, whose
facade is red (0.6) or brown (0.3) given that it is there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import described, read_answer
from dlgpr_core.dialogue.evidence_table import EvidenceTable
from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
from dlgpr_core.dialogue.parse import parse_question
from dlgpr_core.dialogue.questioners import InfoGainQuestioner
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question
from dlgpr_core.dialogue.state import DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import values
from dlgpr_core.mapdb.evidence import ImageEvidence
from dlgpr_core.mapdb.report import PlaceHit

BANK = PlaceEvidence(
    presence={"bank": 0.8}, values={("bank", "colour"): {"red": 0.6, "brown": 0.3}}
)
MODEL = AnswerModel(unknown={}, default_unknown=0.1, floor=0.02, unseen={})
"""Without unseen rates, so the evidence's presence is used as it is (`test_unseen_*`)."""


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
    # a "no" names what the facade is instead: brown and each of the 7 others apart
    others = [k for k in out if k[0] == "no"]
    assert len(others) == 8
    assert all(out[k] == pytest.approx(known * rest) for k in others if k != ("no", "brown"))
    assert sum(out.values()) == pytest.approx(1.0)
    # the open question has the same outcomes, named as values
    open_out = MODEL.outcomes(BANK, attribute_question("bank", "colour"))
    assert sorted(open_out.values()) == pytest.approx(sorted(out.values()))
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


def test_answers_about_one_thing_count_its_presence_once() -> None:
    """ "A bank" and then "its facade is red": the bank is there with 0.8, and given that
    the answers are 1 and 0.9 * 0.6; were it not there, neither would be said (only the
    floor). The presence is summed out once; multiplying the two single likelihoods (what
    the update did before) counts 0.8 twice."""
    f = 0.02
    seen = [
        (presence_question("bank"), ("present",)),
        (attribute_question("bank", "colour"), ("value", "red")),
    ]
    there = (f + (1 - f) * 1.0) * (f + (1 - f) * 0.9 * 0.6)
    not_there = f * f
    expect = 0.8 * there + 0.2 * not_there
    assert MODEL.joint_likelihood(BANK, seen) == pytest.approx(expect)
    source = EvidenceSource(lambda want: {})
    source.get_many = lambda want: [BANK for _ in want]  # type: ignore[method-assign,assignment]
    update = EvidenceUpdate(source, answer_model=MODEL)
    assert update.log_likelihoods(["p"], seen) == pytest.approx([math.log(expect)])
    single = [MODEL.likelihood(BANK, q, o) for q, o in seen]
    assert math.prod(x or 0.0 for x in single) < 0.85 * expect  # the double count
    # one observation: the joint is the single likelihood; exact evidence: the product
    q, o = seen[1]
    assert MODEL.joint_likelihood(BANK, [(q, o)]) == pytest.approx(MODEL.likelihood(BANK, q, o))
    sure = PlaceEvidence(presence={"bank": 1.0}, values=BANK.values)
    assert MODEL.joint_likelihood(sure, seen) == pytest.approx(
        math.prod(MODEL.likelihood(sure, q, o) or 0.0 for q, o in seen)
    )
    # things asked about apart stay independent
    two = [*seen, (presence_question("bench"), ("absent",))]
    assert MODEL.joint_likelihood(BANK, two) == pytest.approx(expect * (f + (1 - f) * 1.0))


def test_the_questioner_plans_with_the_presence_the_answers_imply() -> None:
    """After "there is a bank", P(bank there) at a place seen with 0.8 is
    0.8 / (0.8 + 0.2 * floor); the questioner plans the bank's colour with it, so a place
    whose images barely show a bank no longer seems to answer "there is none"."""
    f = 0.02
    p = np.array([0.8, 0.1])
    given = [MODEL.given(2, None, (), presence_question("bank"), ("present",))]
    post = MODEL.presence_posterior(p, given)
    assert post == pytest.approx([0.8 / (0.8 + 0.2 * f), 0.1 / (0.1 + 0.9 * f)])
    assert MODEL.presence_posterior(p, []) is p
    # saying it is not there makes it (nearly) absent everywhere
    gone = [MODEL.given(2, None, (), presence_question("bank"), ("absent",))]
    assert MODEL.presence_posterior(p, gone) == pytest.approx(
        [0.8 * f / (0.8 * f + 0.2), 0.1 * f / (0.1 * f + 0.9)]
    )
    faint = PlaceEvidence(presence={"bank": 0.1}, values={("bank", "colour"): {"red": 0.9}})
    source = EvidenceSource(lambda want: {})
    by_id = {"a": BANK, "b": faint}
    source.get_many = lambda want: [by_id[i] for i in want]  # type: ignore[method-assign,assignment]
    questioner = InfoGainQuestioner(source, answer_model=MODEL)
    rows = questioner.table.rows(["a", "b"])
    state = _state("I am by a bank.", ["a", "b"])
    presence = questioner._presence(state, rows)
    assert presence["bank"] == pytest.approx(post)
    cols = questioner._columns(attribute_question("bank", "colour"), rows, presence)
    assert cols[:, 0] == pytest.approx(1.0 - post)  # P(absent): small at both places now


def _state(d0: str, ids: Sequence[str]) -> DialogueState:
    """A dialogue at round 0 over `ids`, belief uniform."""
    hits = tuple(
        PlaceHit(i + 1, 0.5, pid, 0.0, 0.0, "", 0, "Town", "") for i, pid in enumerate(ids)
    )
    n = len(ids)
    return DialogueState("d", 0, d0, (), (), hits, n, tuple([1.0 / n] * n))


def test_unseen_things_keep_the_chance_a_person_sees_them() -> None:
    """A bench no view shows (presence 0) is still there at 12% of such places: a person's
    "yes, there is a bench" must cost the place a factor of about 8, not the floor's 50.
    By hand, with r = 0.12: P(there) = p + (1 - p) * r for the dictionary path, the dense
    table the questioner plans with, and the update; a thing without a rate is unchanged."""
    f, r = 0.02, 0.12
    model = AnswerModel(unknown={}, default_unknown=0.1, floor=f, unseen={"bench": r})
    place = PlaceEvidence(presence={"bank": 0.8, "bench": 0.5}, values=BANK.values)
    unseen_bench = PlaceEvidence(presence={"bank": 0.8}, values=BANK.values)
    bench = presence_question("bench")
    assert model.there("bench", 0.0) == pytest.approx(r)
    assert model.there("bench", 0.5) == pytest.approx(0.5 + 0.5 * r)
    assert model.there("bank", 0.3) == pytest.approx(0.3)
    assert model.outcomes(unseen_bench, bench) == pytest.approx(
        {("present",): r, ("absent",): 1 - r}
    )
    assert model.likelihood(unseen_bench, bench, ("present",)) == pytest.approx(f + (1 - f) * r)
    assert MODEL.likelihood(unseen_bench, bench, ("present",)) == pytest.approx(f)
    colour = attribute_question("bench", "colour")
    seen = [(bench, ("present",)), (colour, ("value", "green"))]
    n = len(values("bench", "colour"))
    p = 0.5 + 0.5 * r
    expect = p * (f + (1 - f)) * (f + (1 - f) * 0.9 / n) + (1 - p) * f * f
    assert model.joint_likelihood(place, seen) == pytest.approx(expect)
    table = EvidenceTable(EvidenceSource(lambda ids: {}), model)
    row = table.row(unseen_bench)
    layout = table.layout
    assert row[0][layout.category_column("bench")] == pytest.approx(r)
    assert row[0][layout.category_column("bank")] == pytest.approx(0.8)
    source = EvidenceSource(lambda want: {})
    source.get_many = lambda want: [place for _ in want]  # type: ignore[method-assign,assignment]
    update = EvidenceUpdate(source, answer_model=model)
    assert update.log_likelihoods(["p"], seen) == pytest.approx([math.log(expect)])


def test_columns_agree_with_the_outcomes() -> None:
    """The array form the questioner plans with gives `outcomes`' numbers, place by place."""
    table = EvidenceTable(EvidenceSource(lambda ids: {}), MODEL)
    rows = [table.row(BANK), table.row(None), table.row(PlaceEvidence({"cafe": 0.4}, {}))]
    presence = np.stack([r[0] for r in rows])
    vals = np.stack([r[1] for r in rows])
    known = np.array([r[2] for r in rows])
    layout = table.layout
    col = layout.category_column("bank")
    assert col is not None
    pres = MODEL.presence_columns(presence[:, col], known)
    assert pres[0] == pytest.approx([0.8, 0.2, 0.0])
    assert pres[1] == pytest.approx([0.0, 0.0, 1.0])  # no evidence: one certain outcome
    i = next(i for i, (c, a, _) in enumerate(layout.pairs) if (c, a) == ("bank", "colour"))
    c, a, names = layout.pairs[i]
    block = vals[:, layout.offsets[i] : layout.offsets[i] + len(names)]
    cols = MODEL.attribute_columns(presence[:, col], block, a, known)
    for row, ev in ((0, BANK), (2, PlaceEvidence({"cafe": 0.4}, {}))):
        expect = MODEL.outcomes(ev, attribute_question(c, a))
        assert cols[row, 0] == pytest.approx(expect[("absent",)])
        assert cols[row, 1] == pytest.approx(expect[("unknown",)])
        for j, v in enumerate(names):
            assert cols[row, 2 + j] == pytest.approx(expect.get(("value", v), 0.0))
    assert cols[1] == pytest.approx([0.0, 1.0] + [0.0] * len(names))
    assert cols.sum(axis=1) == pytest.approx(1.0)


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


def test_questioner_and_update_share_one_table_per_source() -> None:
    """The questioner and the answer update of one engine read the same candidates: each
    place's evidence row is built once per source and answer model, not once per reader."""
    loads: list[list[str]] = []

    def load(ids: Sequence[str]) -> dict[str, list[ImageEvidence]]:
        loads.append(list(ids))
        return {}

    source = EvidenceSource(load)
    ig = InfoGainQuestioner(source, answer_model=MODEL)
    update = EvidenceUpdate(source, answer_model=MODEL)
    assert ig.table is update.table
    ig.table.rows(["a", "b"])
    update.table.rows(["b", "a"])
    assert loads == [["a", "b"]]
    # another answer model, or another source, gets a table of its own
    assert InfoGainQuestioner(source, answer_model=AnswerModel()).table is not ig.table
    assert EvidenceUpdate(EvidenceSource(load), answer_model=MODEL).table is not ig.table


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


def test_a_kind_word_that_is_also_a_sign_name_is_read_as_the_kind() -> None:
    """One post office's sign says "Post Office": "a post office" is the kind, not that sign
    (read as the sign, a description naming a post office counted against every post office
    called otherwise, and answers about a post office's colour went unread)."""
    seen = described("I see a bookshop next to a post office.")
    assert {(q.category, q.attribute, o) for q, o in seen} == {
        ("bookshop", None, ("present",)),
        ("post office", None, ("present",)),
    }
    colour = parse_question("What colour is the post office?")
    assert colour is not None and colour.question.key == (
        "attribute",
        "post office",
        "colour",
        None,
    )
    assert read_answer(
        attribute_question("post office", "colour"), "The post office has a grey facade."
    ) == ("value", "grey")
    assert read_answer(
        attribute_question("post office", "floors"), "The post office is a two-storey building."
    ) == ("value", "2")
    # Written as a name, it is still the sign.
    name = attribute_question("post office", "name")
    assert read_answer(name, 'The sign of the post office says "Post Office".') == (
        "value",
        "Post Office",
    )
    called = parse_question('Is the post office called "Post Office"?')
    assert called is not None and called.question.value == "Post Office"


def test_a_sign_name_is_read_whole_and_names_its_kind() -> None:
    """People name places by their signs: "St. Mary's" (a full stop inside) and "Bloom and
    Petal" (an "and" inside) are one name each, and a name alone says which kind is there;
    a sign of another kind in a clause about a bakery is not the bakery's name."""
    seen = {
        (q.category, q.attribute, q.value, o)
        for q, o in described(
            "I am by St. Mary's, next to a bakery. A florist called Bloom and Petal."
        )
    }
    assert seen == {
        ("bakery", None, None, ("present",)),
        ("church", None, None, ("present",)),
        ("church", "name", "St. Mary's", ("yes",)),
        ("florist", None, None, ("present",)),
        ("florist", "name", "Bloom and Petal", ("yes",)),
    }
    assert parse_question("Is the bakery next to St. Mary's?") is None


def _reference_expected_entropy(
    model: AnswerModel, q: Question, evs: list[PlaceEvidence | None], belief: list[float]
) -> float:
    """The textbook sum over answers of P(a) H(belief | a), one place and answer at a time
    from `AnswerModel.outcomes` (what the questioner's arrays must reproduce)."""
    joint: dict[tuple[str, ...], list[float]] = {}
    for i, (ev, b) in enumerate(zip(evs, belief, strict=True)):
        for outcome, p in model.outcomes(ev, q).items():
            joint.setdefault(outcome, [0.0] * len(evs))[i] += b * p
    total = sum(belief)
    out = 0.0
    for g in joint.values():
        mass = sum(g)
        if mass > 0:
            out += mass / total * -sum(x / mass * math.log(x / mass) for x in g if x > 0)
    return out


_COLOURS = list(values("bank", "colour"))


@st.composite
def _place(draw: st.DrawFn) -> PlaceEvidence | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None  # a place the annotator left no evidence for
    p = draw(st.floats(0.0, 1.0))
    shown = draw(st.lists(st.sampled_from(_COLOURS), max_size=4, unique=True))
    weights = [draw(st.floats(0.01, 1.0)) for _ in shown]
    total = sum(weights) / draw(st.floats(0.3, 1.0))  # annotators may list < 100%
    dist = {c: w / total for c, w in zip(shown, weights, strict=True)}
    return PlaceEvidence({"bank": p}, {("bank", "colour"): dist} if dist else {})


@settings(max_examples=60, deadline=None)
@given(
    places=st.lists(_place(), min_size=1, max_size=6),
    raw=st.lists(st.floats(0.01, 1.0), min_size=6, max_size=6),
)
def test_vectorised_information_gain_equals_the_reference(
    places: list[PlaceEvidence | None], raw: list[float]
) -> None:
    belief = raw[: len(places)]
    ig = InfoGainQuestioner(EvidenceSource(lambda ids: {}), answer_model=MODEL)
    for q in (
        presence_question("bank"),
        attribute_question("bank", "colour"),
        attribute_question("bank", "colour", "red"),
    ):
        expect = _reference_expected_entropy(MODEL, q, places, belief)
        assert ig.expected_entropy(q, places, belief) == pytest.approx(expect, abs=1e-9)


_OUTCOMES = [
    (presence_question("bank"), ("present",)),
    (presence_question("bank"), ("absent",)),
    (presence_question("bank"), ("unknown",)),
    (attribute_question("bank", "colour"), ("value", "red")),
    (attribute_question("bank", "colour"), ("value", "red", "brown")),
    (attribute_question("bank", "colour"), ("value",)),
    (attribute_question("bank", "colour"), ("unknown",)),
    (attribute_question("bank", "colour"), ("absent",)),
    (attribute_question("bank", "colour", "red"), ("yes",)),
    (attribute_question("bank", "colour", "red"), ("no",)),
    (attribute_question("bank", "colour", "red"), ("no", "white")),
]


@settings(max_examples=60, deadline=None)
@given(
    places=st.lists(_place(), min_size=1, max_size=6),
    seen=st.lists(st.sampled_from(_OUTCOMES), min_size=1, max_size=4),
)
def test_vectorised_update_equals_the_reference(
    places: list[PlaceEvidence | None], seen: list[tuple[Question, tuple[str, ...]]]
) -> None:
    """The answer update's arrays give, place by place, ln `joint_likelihood` summed over
    the things asked about (the answers about one thing share its presence), with a place
    without evidence at the median of the others for each thing (neither helped nor hurt)."""
    ids = [f"p{i}" for i in range(len(places))]
    by_id = dict(zip(ids, places, strict=True))
    source = EvidenceSource(lambda want: {})
    source.get_many = lambda want: [by_id[i] for i in want]  # type: ignore[method-assign,assignment]
    update = EvidenceUpdate(source, answer_model=MODEL)
    got = update.log_likelihoods(ids, seen)
    expect = [0.0] * len(ids)
    for category in dict.fromkeys(q.category for q, _ in seen):
        mine = [(q, o) for q, o in seen if q.category == category]
        ls = [MODEL.joint_likelihood(ev, mine) for ev in places]
        known = sorted(x for x in ls if x is not None)
        neutral = float(np.median(known)) if known else 1.0
        for i, x in enumerate(ls):
            expect[i] += math.log(x if x is not None else neutral)
    assert got == pytest.approx(expect, abs=1e-9)
