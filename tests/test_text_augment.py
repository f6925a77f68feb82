"""Training-text augmentation: determinism per seed, and what each transformation makes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dlgpr_core.data.annotations import PlaceAnnotation, read_annotations
from dlgpr_core.data.text_augment import (
    DONT_KNOW,
    TRANSFORMATIONS,
    TextAugmentConfig,
    TextAugmenter,
    element_statements,
    sentences,
    spoken_form,
)
from dlgpr_core.synth import generate_city


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> list[PlaceAnnotation]:
    out: Path = tmp_path_factory.mktemp("synth")
    generate_city(out, "Augtown", n_places=12, views_per_place=1, seed=4, progress=False)
    return read_annotations(out / "Annotations" / "Augtown.jsonl")


@pytest.fixture(scope="module")
def augmenter(places: list[PlaceAnnotation]) -> TextAugmenter:
    return TextAugmenter.from_places(places, TextAugmentConfig(variants_per_place=20))


def test_variants_are_deterministic_per_seed_and_place(
    augmenter: TextAugmenter, places: list[PlaceAnnotation]
) -> None:
    a = augmenter.variants(places[3], seed=7)
    assert len(a) == 20
    # the same seed gives the same texts, whatever was drawn before or for other places
    augmenter.variants(places[0], seed=7)
    assert augmenter.variants(places[3], seed=7) == a
    fresh = TextAugmenter.from_places(places, TextAugmentConfig(variants_per_place=20))
    assert fresh.variants(places[3], seed=7) == a
    # another seed, or another place, draws other texts
    assert augmenter.variants(places[3], seed=8) != a
    assert augmenter.variants(places[4], seed=7) != a


def draw(augmenter: TextAugmenter, name: str, place: PlaceAnnotation, i: int) -> str:
    config = augmenter.config.model_copy(update={"spoken_prob": 0.0})
    quiet = TextAugmenter(config, augmenter.vocabulary)
    out = quiet.make(name, place, np.random.default_rng(i))  # type: ignore[arg-type]
    assert out.transformation == name and not out.spoken
    return out.text


def test_each_transformation(augmenter: TextAugmenter, places: list[PlaceAnnotation]) -> None:
    cfg = augmenter.config
    for i, place in enumerate(places):
        sents = sentences(place.description)
        truths = {s for e in place.elements for s in element_statements(e)}
        negatives = set(augmenter.negation_pool(place))
        present = {e.category for e in place.elements}

        dropped = sentences(draw(augmenter, "drop", place, i))
        assert 1 <= len(dropped) < len(sents)
        rest = iter(sents)
        assert all(any(s == t for t in rest) for s in dropped)  # a subsequence: order kept

        shuffled = sentences(draw(augmenter, "shuffle", place, i))
        assert sorted(shuffled) == sorted(sents)

        part = sentences(draw(augmenter, "partial", place, i))
        assert 1 <= len(part) <= cfg.partial_max and set(part) <= set(sents)

        assert draw(augmenter, "caption", place, i) == place.caption

        answers = sentences(draw(augmenter, "answers", place, i))
        assert 1 <= len(answers) <= cfg.answers_max and set(answers) <= truths

        negs = sentences(draw(augmenter, "negations", place, i))
        assert 1 <= len(negs) <= cfg.negations_max and set(negs) <= negatives
        for s in negs:  # a negation is true of the place
            absent = re.fullmatch(r"(?:No, t|T)here is no (.+)\.", s)
            if absent:
                assert absent.group(1) not in present

        dialogue = draw(augmenter, "dialogue", place, i)
        if not dialogue.startswith(place.caption):  # opened with a partial recall instead
            assert sentences(dialogue)[0] in sents
        else:
            appended = sentences(dialogue[len(place.caption) :])
            assert appended and set(appended) <= truths | negatives | {DONT_KNOW}


def test_negations_name_wrong_values(
    augmenter: TextAugmenter, places: list[PlaceAnnotation]
) -> None:
    for place in places:
        colours = {
            e.category: e.attributes.get("colour") for e in place.elements if e.kind == "building"
        }
        for s in augmenter.negation_pool(place):
            m = re.fullmatch(r"No, the (.+) is not (.+)\.", s)
            if m and m.group(1) in colours:  # about the place's only building of its kind
                same = [e for e in place.elements if e.category == m.group(1)]
                assert len(same) == 1
                assert m.group(2) not in (
                    same[0].attributes.get("colour"),
                    same[0].attributes.get("material"),
                )


def test_all_transformations_are_drawn_and_weights_switch_them(
    augmenter: TextAugmenter, places: list[PlaceAnnotation]
) -> None:
    drawn = {v.transformation for p in places for v in augmenter.variants(p, 0)}
    assert drawn == set(TRANSFORMATIONS)
    spoken = [v for p in places for v in augmenter.variants(p, 0) if v.spoken]
    assert spoken and all(v.text == spoken_form(v.text) for v in spoken)
    only = TextAugmentConfig(variants_per_place=30, weights={"caption": 1.0, "answers": 2.0})
    picky = TextAugmenter(only, augmenter.vocabulary)
    assert {v.transformation for v in picky.variants(places[0], 1)} == {"caption", "answers"}
    with pytest.raises(ValueError, match="zero"):
        TextAugmenter(TextAugmentConfig(weights={}), augmenter.vocabulary)


def test_spoken_form_and_sentences() -> None:
    assert spoken_form('The sign says "Tool Depot". No, there\'s no bench!') == (
        "the sign says tool depot no there's no bench"
    )
    assert sentences("A church called St. Peter's. It is red!  Yes?") == [
        "A church called St. Peter's.",
        "It is red!",
        "Yes?",
    ]
