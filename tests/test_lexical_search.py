"""The lexical channel of a map search: BM25 over the map's evidence, fused with the cosine.

`HistogramEncoder` (tests/test_mapdb.py) is a PLUMBING FIXTURE: its text embedding is a
hashed bag of words, so which place the dense side prefers is arbitrary but fixed; the
tests check that the lexical channel moves the place whose evidence the words name, by the
documented amount, and that the map remembers its setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_mapdb import HistogramEncoder, built_map

from dlgpr_core.mapdb import MapDatabase
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.mapdb.lexical import LexicalIndex, LexicalSpec

SIGNS = {"p0": "Union Savings", "p1": "Tool Depot", "p2": "Golden Crust", "p3": "Page Turner"}


@pytest.fixture
def db(tmp_path: Path) -> MapDatabase:
    db = built_map(tmp_path, places=4)
    rows = db.image_rows(list(range(1, 13)))
    results = [
        (
            i,
            [
                EvidenceItem(f'a shop whose sign reads "{SIGNS[r.place_id]}"', 0.9),
                EvidenceItem("a faint guess", 0.2),
            ],
        )
        for i, r in rows.items()
    ]
    db.put_evidence("signs", "v1", results)
    return db


def test_lexical_channel_lifts_the_place_its_words_name(db: MapDatabase) -> None:
    enc = HistogramEncoder()
    query = "a shop with a sign saying Golden Crust"
    dense = db.search(query, enc, k=4)
    assert db.lexical_spec() is None  # dense only until the map is told otherwise
    spec = LexicalSpec("signs", weight=0.5, fusion="sum")
    fused = db.search(query, enc, k=4, lexical=spec)
    assert fused[0].place_id == "p2"
    by_id = {h.place_id: h.score for h in dense}
    # the best lexical match gains exactly `weight` cosine units; others proportionally less
    assert fused[0].score == pytest.approx(by_id["p2"] + 0.5, abs=1e-5)
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    # a query none of the evidence words match leaves the dense ranking as it was
    assert [h.place_id for h in db.search("xyzzy", enc, k=4, lexical=spec)] == [
        h.place_id for h in db.search("xyzzy", enc, k=4)
    ]


def test_reciprocal_rank_fusion_keeps_the_dense_score_ladder(db: MapDatabase) -> None:
    """RRF (the default, chosen on the validation city) re-orders by ranks alone and hands
    the places the dense scores of their new ranks, so the belief's scale is unchanged."""
    enc = HistogramEncoder()
    query = "a shop with a sign saying Golden Crust"
    dense = db.search(query, enc, k=4)
    fused = db.search(query, enc, k=4, lexical=LexicalSpec("signs"))
    assert LexicalSpec("signs").fusion == "rrf"
    assert fused[0].place_id == "p2"
    assert [h.score for h in fused] == pytest.approx([h.score for h in dense])
    assert sorted(h.place_id for h in fused) == sorted(h.place_id for h in dense)


def test_the_map_remembers_its_setting_and_new_evidence_counts(db: MapDatabase) -> None:
    enc = HistogramEncoder()
    db.set_lexical(LexicalSpec("signs", weight=0.5, fusion="sum"))
    assert db.lexical_spec() == LexicalSpec("signs", weight=0.5, fusion="sum")
    assert db.search("Tool Depot", enc, k=1)[0].place_id == "p1"
    # new evidence invalidates the index: p3 now also reads "Tool Depot"
    rows = db.image_rows(list(range(1, 13)))
    db.put_evidence(
        "signs",
        "v2",
        [
            (i, [EvidenceItem("Tool Depot Tool Depot", 0.9)])
            for i, r in rows.items()
            if r.place_id == "p3"
        ],
    )
    assert db.search("Tool Depot", enc, k=1)[0].place_id == "p3"
    db.set_lexical(None)
    assert db.lexical_spec() is None


def test_low_confidence_phrases_are_left_out_and_settings_are_checked(db: MapDatabase) -> None:
    index = LexicalIndex.from_evidence(db.evidence, "signs", ["p0", "p1"], min_confidence=0.5)
    assert index.scores("faint guess").max() == 0.0
    assert index.scores("union savings")[0] > 0
    with pytest.raises(ValueError, match="fusion"):
        LexicalSpec("signs", fusion="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid"):
        LexicalSpec("signs", weight=-1)


def test_an_attribute_counts_as_sure_as_its_category_is_seen(db: MapDatabase) -> None:
    """An attribute item's confidence is P(value | its category is visible): a learned
    annotator reads a colour for a bakery it barely sees. The lexical document takes the
    phrase only when P(visible) x P(value) reaches the threshold; presence items and
    attributes without a presence item in the image (the street) keep their own confidence.
    (Before: every attribute phrase at >= 0.3 conditional confidence went in, and on a small
    generated city the dense + lexical top-5 fell below what the CLI test asks.)"""
    rows = db.image_rows(list(range(1, 13)))
    p0 = [i for i, r in rows.items() if r.place_id == "p0"]
    p1 = [i for i, r in rows.items() if r.place_id == "p1"]
    items = {
        "p0": [
            EvidenceItem("a bakery", 0.1, "bakery", "category", "bakery"),
            EvidenceItem("a purple bakery", 0.9, "bakery", "colour", "purple"),
            EvidenceItem("a cobbled street", 0.9, "street", "pavement", "cobbled"),
        ],
        "p1": [
            EvidenceItem("a bakery", 0.8, "bakery", "category", "bakery"),
            EvidenceItem("an orange bakery", 0.6, "bakery", "colour", "orange"),
        ],
    }
    db.put_evidence(
        "learned-like",
        "v1",
        [(i, items["p0"]) for i in p0] + [(i, items["p1"]) for i in p1],
    )
    index = LexicalIndex.from_evidence(db.evidence, "learned-like", ["p0", "p1"], 0.3)
    assert index.scores("purple").max() == 0.0  # 0.1 x 0.9 = 0.09: left out
    assert index.scores("orange")[1] > 0  # 0.8 x 0.6 = 0.48: kept
    assert index.scores("cobbled")[0] > 0  # the street has no presence item
    assert index.scores("bakery")[1] > 0 and index.scores("bakery")[0] == 0.0


def test_the_first_annotation_turns_the_channel_on_unless_switched_off(tmp_path: Path) -> None:
    """A built map searches with its evidence words by default (every caller: the robot, the
    CLI, the evaluation), over the first annotator's evidence; the user's "off" is kept."""
    from test_evidence_store import ColourAnnotator

    db = built_map(tmp_path, places=3)
    assert db.lexical_spec() is None
    assert db.info().lexical.startswith("off")
    db.annotate(ColourAnnotator(), batch_size=4, progress=False)
    assert db.lexical_spec() == LexicalSpec("colour")
    assert "BM25 over the words of 'colour' evidence" in db.info().render()
    # a second annotator does not take the channel over
    db.annotate(ColourAnnotator(version="v2"), batch_size=4, progress=False, redo=True)
    assert db.lexical_spec() == LexicalSpec("colour")
    # switched off, it stays off through later annotations
    db.set_lexical(None)
    db.annotate(ColourAnnotator(version="v3"), batch_size=4, progress=False)
    assert db.lexical_spec() is None
    reopened = MapDatabase.open(tmp_path / "map")
    assert reopened.lexical_spec() is None
    assert reopened.info().lexical.startswith("off")


def test_map_lexical_command_changes_and_stops_the_channel(db: MapDatabase) -> None:
    from typer.testing import CliRunner

    from dlgpr_core.cli import app

    where = str(db.directory)
    runner = CliRunner()
    refused = runner.invoke(app, ["map", "lexical", "--map", where, "--weight", "0.3"])
    assert refused.exit_code != 0 and "--annotator" in refused.output
    done = runner.invoke(app, ["map", "lexical", "--map", where, "--annotator", "signs"])
    assert done.exit_code == 0, done.output
    assert "'signs'" in done.output
    runner.invoke(app, ["map", "lexical", "--map", where, "--weight", "0.3"])
    assert MapDatabase.open(where).lexical_spec() == LexicalSpec("signs", weight=0.3)
    bad = runner.invoke(app, ["map", "lexical", "--map", where, "--fusion", "max"])
    assert isinstance(bad.exception, ValueError) and "fusion" in str(bad.exception)
    assert MapDatabase.open(where).lexical_spec() == LexicalSpec("signs", weight=0.3)
    off = runner.invoke(app, ["map", "lexical", "--map", where, "--off"])
    assert off.exit_code == 0 and "off" in off.output
    assert MapDatabase.open(where).lexical_spec() is None
