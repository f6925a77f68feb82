"""Evaluation-only rephrasings: determinism, distance from the generator's wording,
truthfulness (no invented or foreign facts), ASR noise and the query file format."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import numpy as np
import pytest

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.synth.city import plan_city
from dlgpr_core.synth.rephrase import (
    EvalQuery,
    asr_noise,
    asr_normalise,
    make_eval_queries,
    mangle_name,
    read_eval_queries,
    rephrase_place,
    write_eval_queries,
)
from dlgpr_core.synth.rephrase import lexicon as lx
from dlgpr_core.synth.terms import find_terms

STYLES = ("spoken", "written", "partial")


@pytest.fixture(scope="module")
def places() -> list[PlaceAnnotation]:
    out: list[PlaceAnnotation] = []
    for city, seed in (("Rephraseton", 3), ("Otherburg", 8)):
        plans, _ = plan_city(city, 40, 1, seed, 0.5)
        out += [
            PlaceAnnotation(
                city=city,
                place_id=p.place_id,
                caption=p.text.caption,
                description=p.text.description,
                elements=p.text.elements,
                facts=p.text.facts,
                relations=p.text.relations,
            )
            for p in plans
        ]
    return out


def _rephrase(p: PlaceAnnotation, style: str, seed: int = 0) -> str:
    return rephrase_place(p, np.random.default_rng([seed, p.place_id, len(p.city)]), style)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _grams(text: str, n: int = 4) -> list[tuple[str, ...]]:
    t = _tokens(text)
    return [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]


def _unquoted(text: str) -> str:
    """The text without its quoted sign names (a sign may read "City Pharmacy")."""
    return re.sub(r'"[^"]*"', " ", text)


def _similar(name: str, seen: str) -> float:
    """String similarity that also forgives a word order swap ("Central Hotel")."""
    a, b = name.lower(), seen.lower()
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
    swapped = difflib.SequenceMatcher(None, sorted(a.split()), sorted(b.split())).ratio()
    return max(ratio, swapped)


def _place_colours(p: PlaceAnnotation) -> set[str]:
    values = {v for e in p.elements for v in e.attributes.values()}
    return {c for c in lx.COLOUR_SYNONYMS if any(re.search(rf"\b{c}\b", v) for v in values)}


def _mask_categories(text: str) -> str:
    masked = text.lower()
    phrases = sorted({q for v in lx.category_lexicon().values() for q in v}, key=len, reverse=True)
    for q in phrases:
        masked = re.sub(rf"(?<![\w-]){re.escape(q.lower())}(?:s|es)?(?![\w-])", " ", masked)
    return masked


def test_same_seed_same_text_other_seed_other_text(places: list[PlaceAnnotation]) -> None:
    p = places[0]
    for style in STYLES:
        assert _rephrase(p, style) == _rephrase(p, style)
    differ = sum(_rephrase(q, "spoken", 0) != _rephrase(q, "spoken", 1) for q in places[:10])
    assert differ == 10
    with pytest.raises(ValueError, match="style"):
        rephrase_place(p, np.random.default_rng(0), "poetic")


def test_rephrasings_share_few_4grams_with_the_generator(places: list[PlaceAnnotation]) -> None:
    for p in places:
        gen = set(_grams(p.description))
        for style in STYLES:
            grams = _grams(_rephrase(p, style))
            shared = sum(g in gen for g in grams) / len(grams)
            assert shared < 0.2, (style, shared, p.description)
        text = _rephrase(p, "spoken").lower()
        for generator_only in ("storey", "awning", "facade", "sign reads", "whose sign"):
            assert generator_only not in text


def test_full_rephrasings_name_every_sign_and_category(places: list[PlaceAnnotation]) -> None:
    for p in places:
        for style in ("spoken", "written"):
            text = _rephrase(p, style)
            quoted = re.findall(r'"([^"]*)"', text)
            found = find_terms(_unquoted(text), lx.category_lexicon())
            for e in p.elements:
                if e.kind == "street":
                    continue
                assert e.category in found, (e.category, text)
                if "name" in e.attributes:
                    best = max(_similar(e.attributes["name"], q) for q in quoted)
                    assert best >= 0.7, (e.attributes["name"], quoted)
            # Synonyms, not the generator's nouns, carry most category mentions.
            assert "phone booth" not in text and "lamp post" not in text


def test_every_statement_is_true_of_the_place(places: list[PlaceAnnotation]) -> None:
    number_words = {w: n for n, w in lx.NUMBER_WORDS.items() if n > 1}
    for p in places:
        own = {e.category for e in p.elements}
        colours = _place_colours(p)
        numbers = {
            int(v)
            for e in p.elements
            for k, v in e.attributes.items()
            if k in ("floors", "count", "buildings")
        }
        for style in STYLES:
            text = _unquoted(_rephrase(p, style))
            cats = find_terms(text, lx.category_lexicon())
            assert cats <= own, (style, cats - own, text)  # no element of another place
            used = find_terms(text, lx.COLOUR_SYNONYMS)
            assert used <= colours, (style, used - colours, text)
            said = {number_words[t] for t in _tokens(text) if t in number_words}
            assert said <= numbers, (style, said - numbers, text)
            words = set(_tokens(_mask_categories(text)))
            assert not words & lx.TRANSIENT_WORDS, (style, words & lx.TRANSIENT_WORDS)


def test_partial_recall_is_shorter(places: list[PlaceAnnotation]) -> None:
    ratios = []
    for p in places:
        full = len(_rephrase(p, "spoken").split())
        part = len(_rephrase(p, "partial").split())
        ratios.append(part / full)
    assert np.mean(ratios) < 0.85
    assert np.mean(np.array(ratios) < 1.0) > 0.9


def test_mangled_names_stay_recognisable() -> None:
    rng = np.random.default_rng(0)
    seen = {mangle_name("Apotheca", rng) for _ in range(20)}
    assert "Apotheka" in seen
    for name in ("St. Mary's", "The Book Nook", "GreenCross", "Bloom and Petal", "Hotel Aurora"):
        for _ in range(10):
            m = mangle_name(name, rng)
            assert m != name
            assert _similar(name, m) >= 0.7, (name, m)


def _changed_fraction(clean: list[str], noisy: list[str]) -> float:
    sm = difflib.SequenceMatcher(None, clean, noisy, autojunk=False)
    changed = sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal")
    return changed / len(clean)


def test_asr_noise_changes_about_rate_of_words_in_asr_style(places: list[PlaceAnnotation]) -> None:
    texts = [_rephrase(p, "spoken") for p in places[:30]]
    clean = [w for t in texts for w in asr_normalise(t)]
    for rate in (0.08, 0.2):
        noisy = [asr_noise(t, np.random.default_rng([i, 7]), rate) for i, t in enumerate(texts)]
        frac = _changed_fraction(clean, " ".join(noisy).split())
        assert 0.6 * rate < frac < 1.6 * rate, (rate, frac)
        for n in noisy:
            assert n == n.lower()
            assert re.fullmatch(r"[\w' ]*", n), n
    t = texts[0]
    assert asr_noise(t, np.random.default_rng(5)) == asr_noise(t, np.random.default_rng(5))
    assert asr_noise(t, np.random.default_rng(5)) != asr_noise(t, np.random.default_rng(6))
    assert asr_noise(t, np.random.default_rng(5), rate=0.0) == " ".join(asr_normalise(t))
    assert asr_noise('Three-storey "City Pharmacy"!', np.random.default_rng(0), 0.0) == (
        "three storey city pharmacy"
    )


def test_asr_noise_makes_recogniser_errors() -> None:
    text = "There's four blue phone boxes and a brick café, two floors, by the flower shop."
    outs = {asr_noise(text, np.random.default_rng(i), rate=0.5) for i in range(60)}
    words = {w for o in outs for w in o.split()}
    assert {"their", "for", "blew"} & words
    assert "4" in words or "2" in words
    assert {"um", "uh", "erm", "hmm"} & words


def test_eval_queries_are_deterministic_namespaced_and_round_trip(
    places: list[PlaceAnnotation], tmp_path: Path
) -> None:
    sub = places[:5]
    qs = make_eval_queries(sub, seed=1)
    assert qs == make_eval_queries(sub, seed=1)
    assert len(qs) == 5 * 4
    assert [q.variant for q in qs[:4]] == ["generator", "rephrased", "rephrased+asr", "caption"]
    by = {(q.place_id, q.variant): q.text for q in qs}
    p = sub[0]
    pid = f"{p.city}:{p.place_id}"
    assert by[(pid, "generator")] == p.description
    assert by[(pid, "caption")] == p.caption
    # The noisy variant is the rephrased text heard through ASR, not a different text.
    clean = asr_normalise(by[(pid, "rephrased")])
    noisy = by[(pid, "rephrased+asr")].split()
    assert _changed_fraction(clean, noisy) < 0.25
    # Asking for fewer variants leaves the others' texts unchanged.
    only = make_eval_queries(sub, seed=1, variants=("rephrased+asr",))
    assert [q.text for q in only] == [q.text for q in qs if q.variant == "rephrased+asr"]
    assert make_eval_queries(sub, seed=2)[1].text != qs[1].text

    path = tmp_path / "q" / "eval.jsonl"
    write_eval_queries(path, qs)
    assert read_eval_queries(path) == qs
    path.write_text(path.read_text(encoding="utf-8") + '{"place_id": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"eval\.jsonl:21"):
        read_eval_queries(path)
    with pytest.raises(ValueError, match="variant"):
        make_eval_queries(sub, seed=1, variants=("rephrased+typos",))
    assert isinstance(qs[0], EvalQuery)
