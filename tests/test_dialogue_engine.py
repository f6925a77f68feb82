"""Dialogue engine, questioners and the fact-based simulated user.

`overlap_search` below is a PLUMBING FIXTURE, not a retriever: it ranks places by word
overlap between the query and their descriptions, deterministic and model-free, so these
tests exercise the loop's bookkeeping and the user's truthfulness, never retrieval quality.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.dialogue.answers import DONT_KNOW
from dlgpr_core.dialogue.engine import DialogueEngine
from dlgpr_core.dialogue.questioners import InfoGainQuestioner, RandomQuestioner
from dlgpr_core.dialogue.questions import (
    BUILDING_CATEGORIES,
    Question,
    attribute_question,
    presence_question,
    statement,
)
from dlgpr_core.dialogue.registry import make_questioner
from dlgpr_core.dialogue.state import DialogueConfig
from dlgpr_core.evaluation.oracle import oracle_place_evidence, oracle_source
from dlgpr_core.evaluation.summary import summarise
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import STREET, slots
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_core.synth.city import generate_city
from dlgpr_core.synth.vocabulary import BUILDINGS
from dlgpr_core.users.fact import FactUser
from dlgpr_core.users.knowledge import PlaceKnowledge


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> list[PlaceAnnotation]:
    root = tmp_path_factory.mktemp("dl")
    generate_city(root, "Dlville", 30, 1, seed=4, image_size=(64, 48), progress=False)
    return read_annotations(Path(root) / "Annotations" / "Dlville.jsonl")


@pytest.fixture(scope="module")
def by_id(places: list[PlaceAnnotation]) -> dict[str, PlaceAnnotation]:
    return places_by_id(places)


@pytest.fixture(scope="module")
def evidence(places: list[PlaceAnnotation]) -> EvidenceSource:
    """Oracle evidence (ground truth as image evidence): the questioners' input is exact,
    so these tests check the questioners' logic, not an annotator."""
    return oracle_source(places)


# A pool of probes about what some places show (presence, yes/no and open attribute
# questions), for tests that walk over many questions; the info-gain questioner scores every
# probe of the ontology instead (`InfoGainQuestioner.probes`).
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


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def overlap_search(by_id: dict[str, PlaceAnnotation]):
    """Plumbing fixture (see module docstring): Jaccard word overlap with the description."""
    docs = {pid: _words(p.description) for pid, p in by_id.items()}

    def search(text: str, k: int) -> list[PlaceHit]:
        q = _words(text)
        scored = sorted(
            ((len(q & d) / max(len(q | d), 1), pid) for pid, d in docs.items()),
            key=lambda x: (-x[0], x[1]),
        )[:k]
        return [
            PlaceHit(i + 1, s, pid, 0.0, 0.0, "", 0, "Dlville", "")
            for i, (s, pid) in enumerate(scored)
        ]

    return search


def _categories(place: PlaceAnnotation) -> dict[str, str]:
    return {e.id: e.category for e in place.elements}


def test_building_categories_match_generator() -> None:
    assert set(BUILDINGS) == BUILDING_CATEGORIES


def test_fact_user_truthful_on_every_fact(places: list[PlaceAnnotation]) -> None:
    for place in places[:10]:
        user = FactUser(place)
        cats = _categories(place)
        counts = {c: list(cats.values()).count(c) for c in set(cats.values())}
        for f in place.facts:
            cat = cats[f.element_id]
            if f.attribute == "category":
                assert user.answer(presence_question(cat)).startswith("Yes, there is")
                continue
            ans = user.answer(attribute_question(cat, f.attribute, f.value))
            assert ans.startswith("Yes, "), (f, ans)
            assert ans[5:].lower() == statement(cat, f.attribute, f.value).lower()
            open_ans = user.answer(attribute_question(cat, f.attribute))
            if counts[cat] == 1:
                assert open_ans == statement(cat, f.attribute, f.value)


def test_fact_user_no_and_unknown(places: list[PlaceAnnotation]) -> None:
    place = places[0]
    user = FactUser(place)
    present = set(_categories(place).values())
    absent = next(c for c in ("fountain", "statue", "mailbox", "phone booth") if c not in present)
    assert user.answer(presence_question(absent)) == f"No, there is no {absent}."
    b = next(e for e in place.elements if e.kind == "building")
    k = PlaceKnowledge.from_place(place)
    real = k.values[(b.category, "door")]
    wrong = next(c for c in ("red", "green", "blue", "black") if c not in real)
    ans = user.answer(attribute_question(b.category, "door", wrong))
    assert ans.startswith("No, ") and real[0] in ans and wrong not in ans
    # An attribute the facts never state is not guessed.
    assert user.answer(attribute_question(b.category, "chimney", "tall")) == DONT_KNOW
    assert user.answer(Question("Is it nice?", "attribute", b.category, "mood", "nice")) == (
        DONT_KNOW
    )


def _variants(cat: str, attr: str, value: str) -> list[str]:
    """Free-text wordings of a yes/no probe; several are unusual on purpose."""
    q = attribute_question(cat, attr, value).text
    out = [q, q.lower(), q.rstrip("?")]
    if attr == "awning":
        out += [f"Is the {cat}'s awning {value}?", f"are the awnings of the {cat} {value}"]
    if attr == "door":
        out += [f"Is the door of the {cat} {value}?", f"Is the {cat}'s entrance {value}?"]
    if attr == "colour":
        out += [f"Is the {cat} {value}?", f"Is the {cat} painted {value}?"]
    if attr == "material":
        out += [f"Is the {cat} made of {value}?"]
    if attr == "name":
        out += [f"Does the {cat}'s sign say {value}?", f"what's the {cat} called?"]
    out += [
        f"Isn't the {cat} {value}?",
        f"Is the {cat} next to the bank {value}?",
        f"Is the {cat} {value} or green?",
        f"Is the {cat} on the left?",
    ]
    return out


def _allowed(user: FactUser, q: Question) -> set[str]:
    exact = user.answer(q)
    bare = user.knowledge.answer(q, yes_no_prefix=False)
    return {exact, bare, DONT_KNOW}


def test_free_text_never_states_a_wrong_fact(places: list[PlaceAnnotation]) -> None:
    for place in places[:8]:
        user = FactUser(place)
        cats = _categories(place)
        k = PlaceKnowledge.from_place(place)
        for f in place.facts:
            cat = cats[f.element_id]
            if f.attribute == "category" or cat == "street":
                continue
            for value in {f.value, "green", "red"}:
                for text in _variants(cat, f.attribute, value):
                    ans = user.answer(text)
                    # The answer must be one the user could truthfully give to some probe.
                    assert ans == DONT_KNOW or ans in _any_truthful(user, k), (text, ans)


def _any_truthful(user: FactUser, k: PlaceKnowledge) -> set[str]:
    """Every answer the user could truthfully give to any probe about this place."""
    out: set[str] = set()
    for cat in k.categories:
        for q in (presence_question(cat),):
            out |= _allowed(user, q)
    for (cat, attr), vals in k.values.items():
        out |= _allowed(user, attribute_question(cat, attr))
        for v in (*vals, "green", "red", "blue", "wood", "wooden", "none", "1", "2", "3"):
            out |= _allowed(user, attribute_question(cat, attr, v))
    return out


def test_generated_question_texts_parse_back(
    places: list[PlaceAnnotation], evidence: EvidenceSource
) -> None:
    """A questioner's text, read as free text, gets the structured answer (or I don't know)."""
    q = InfoGainQuestioner(evidence)
    user = FactUser(places[0])
    pool = candidate_questions([oracle_place_evidence(p) for p in places[:10]])
    understood = 0
    for question in pool:
        ans = user.answer(question.text)
        assert ans in _allowed(user, question), (question, ans)
        understood += ans != DONT_KNOW or user.answer(question) == DONT_KNOW
    assert understood / len(pool) > 0.9
    assert q.name == "info-gain"


def test_info_gain_splits_candidates(
    by_id: dict[str, PlaceAnnotation], evidence: EvidenceSource
) -> None:
    search = overlap_search(by_id)
    qn = InfoGainQuestioner(evidence)
    engine = DialogueEngine(search, qn, DialogueConfig(confidence=None))
    state = engine.start("I see a bank with a bus stop beside it.")
    question = state.pending_question
    assert question is not None
    outcomes = {
        PlaceKnowledge.from_place(by_id[h.place_id]).outcome(question) for h in state.candidates
    }
    assert len(outcomes) > 1  # not a question every candidate answers alike


def test_info_gain_is_fast(by_id: dict[str, PlaceAnnotation], evidence: EvidenceSource) -> None:
    search = overlap_search(by_id)
    qn = InfoGainQuestioner(evidence)
    engine = DialogueEngine(search, qn, DialogueConfig(confidence=None))
    state = engine.start("A street with shops.")
    # the belief covers every candidate up to top_k (50): here the whole 30-place city
    assert len(state.candidates) == len(by_id) == 30
    qn.ask(state)  # warm the evidence cache
    t0 = time.perf_counter()
    for _ in range(5):
        qn.ask(state)
    assert (time.perf_counter() - t0) / 5 < 0.05


@pytest.mark.parametrize("name", ["info-gain", "random"])
def test_engine_loop(
    name: str, by_id: dict[str, PlaceAnnotation], evidence: EvidenceSource
) -> None:
    search = overlap_search(by_id)
    kwargs: dict[str, Any] = {"seed": 1} if name == "random" else {}
    qn = make_questioner(name, evidence=evidence, **kwargs)
    engine = DialogueEngine(search, qn, DialogueConfig(max_rounds=5, confidence=None, search_k=30))
    target_id, place = next(iter(by_id.items()))
    result = engine.run(place.caption, FactUser(place), target_id)
    assert len(result.states) == 6 and result.final.stop_reason == "max_rounds"
    assert len(result.ranks) == 6 and all(0 <= r < 30 for r in result.ranks)
    keys = [q.key for q in result.final.questions]
    assert len(keys) == len(set(keys)) == 5
    for i, s in enumerate(result.states):
        assert s.round == i
        assert s.query == " ".join((place.caption, *s.answers))  # only answers appended
        assert len(s.answers) == len(s.questions) == i
    summary = summarise([result], max_rounds=5)
    assert summary.n_rounds == 6 and len(summary.recall[1]) == 6


def test_engine_stops_early_on_confidence(
    by_id: dict[str, PlaceAnnotation], evidence: EvidenceSource
) -> None:
    search = overlap_search(by_id)
    qn = InfoGainQuestioner(evidence)
    target_id, place = next(iter(by_id.items()))
    # The full description makes the overlap fixture certain (tiny temperature).
    cfg = DialogueConfig(confidence=0.9, temperature=1e-3)
    result = DialogueEngine(search, qn, cfg).run(place.description, FactUser(place), target_id)
    assert result.final.stop_reason == "confident" and len(result.states) == 1
    assert result.ranks == [0]
    with pytest.raises(ValueError):
        DialogueEngine(search, qn, cfg).step(result.final, "Yes.")


def test_random_questioner_never_repeats(
    by_id: dict[str, PlaceAnnotation], evidence: EvidenceSource
) -> None:
    search = overlap_search(by_id)
    qn = RandomQuestioner(evidence, seed=3)
    engine = DialogueEngine(search, qn, DialogueConfig(max_rounds=40, confidence=None, top_k=1))
    place = next(iter(by_id.values()))
    result = engine.run(place.caption, FactUser(place))
    keys = [q.key for q in result.final.questions]
    assert len(keys) == len(set(keys)) and len(keys) > 5
    assert result.ranks == []
