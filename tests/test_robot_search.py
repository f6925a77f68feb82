"""The robot's search through its three channels, and the static recall that measures it.

`HistogramEncoder` (tests/test_mapdb.py) is a PLUMBING FIXTURE: its text embedding is a
hashed bag of words, so the dense order is arbitrary but fixed. The tests check what each
channel adds on top of it: the evidence channel lifts the place whose image evidence the
description's stated facts fit, by exactly temperature x ln-likelihood; ranks count ties
against the target.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_mapdb import HistogramEncoder, built_map

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.search import RobotSearch
from dlgpr_core.evaluation.search_recall import image_rank, pessimistic_rank
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb import MapDatabase
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.mapdb.lexical import LexicalSpec

# p2 shows a bank and a fountain; the others a bakery (what each place's images show)
SHOWS = {"p0": "bakery", "p1": "bakery", "p2": "bank", "p3": "bakery"}


@pytest.fixture
def db(tmp_path: Path) -> MapDatabase:
    db = built_map(tmp_path, places=4)
    rows = db.image_rows(list(range(1, 13)))
    results = []
    for i, r in rows.items():
        cat = SHOWS[r.place_id]
        items = [EvidenceItem(f"a {cat}", 0.9, cat, "category", cat)]
        if cat == "bank":
            items.append(EvidenceItem("a fountain", 0.8, "fountain", "category", "fountain"))
        results.append((i, items))
    db.put_evidence("ann", "v1", results)
    return db


def test_channels_are_checked(db: MapDatabase) -> None:
    enc = HistogramEncoder()
    with pytest.raises(ValueError, match="dense"):
        RobotSearch(db, enc, None, channels=("lexical",))
    with pytest.raises(ValueError, match="evidence"):
        RobotSearch(db, enc, None, channels=("dense", "evidence"))
    with pytest.raises(ValueError, match="channels"):
        RobotSearch(db, enc, None, channels=("dense", "telepathy"))


def test_evidence_channel_lifts_the_place_the_description_fits(db: MapDatabase) -> None:
    enc = HistogramEncoder()
    source = EvidenceSource.of_map(db.evidence, "ann")
    text = "I see a bank with a fountain in front of it."
    dense = {h.place_id: h.score for h in RobotSearch(db, enc, None, channels=("dense",))(text, 4)}
    search = RobotSearch(db, enc, source, channels=("dense", "evidence"), temperature=0.2)
    hits = search(text, 4)
    assert hits[0].place_id == "p2"
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    # each place gains temperature x ln P(bank there, fountain there | its evidence); a
    # fountain no view shows is still there at the shipped unseen rate (`AnswerModel.there`)
    model = AnswerModel()
    fl, r = model.floor, model.unseen["fountain"]
    assert "bank" not in model.unseen and r > 0

    def gain(p_bank: float, p_fountain: float) -> float:
        there = p_fountain + (1 - p_fountain) * r
        like = (fl + (1 - fl) * p_bank) * (fl + (1 - fl) * there)
        return 0.2 * math.log(like)

    by_id = {h.place_id: h.score for h in hits}
    assert by_id["p2"] == pytest.approx(dense["p2"] + gain(0.9, 0.8), abs=1e-5)
    assert by_id["p0"] == pytest.approx(dense["p0"] + gain(0.0, 0.0), abs=1e-5)


def test_lexical_channel_rides_along(db: MapDatabase) -> None:
    enc = HistogramEncoder()
    spec = LexicalSpec("ann", weight=0.5, fusion="sum")
    search = RobotSearch(db, enc, None, channels=("dense", "lexical"), lexical=spec)
    assert search("fountain", 1)[0].place_id == "p2"
    # without the lexical channel the same words leave the dense order
    dense = RobotSearch(db, enc, None, channels=("dense",), lexical=spec)
    assert [h.place_id for h in dense("fountain", 4)] == [
        h.place_id for h in db.search("fountain", enc, k=4, lexical=None)
    ]


def test_ranks_count_ties_against_the_target() -> None:
    assert pessimistic_rank({"a": 1.0, "b": 1.0, "c": 0.5}, "a") == 1
    assert pessimistic_rank({"a": 1.0, "b": 1.0, "c": 0.5}, "c") == 2
    assert pessimistic_rank({"a": 0.3, "b": 0.2}, "a") == 0
    assert pessimistic_rank({"a": 0.3}, "zz") == 1  # not found: after everything
    # all-identical scores: the target is last, never first
    assert pessimistic_rank(dict.fromkeys("abcd", 0.7), "b") == 3


def test_image_rank_moves_a_place_s_images_together() -> None:
    images = [("a", 0.9), ("a", 0.8), ("b", 0.85), ("c", 0.5)]
    assert image_rank(images, {}, "b") == 1  # a's first image is ahead
    # b gains 0.1 from the other channels: its image now leads
    assert image_rank(images, {"b": 0.1}, "b") == 0
    # a tie with another place's image counts against the target
    assert image_rank(images, {"b": 0.05}, "b") == 1
    assert image_rank(images, {}, "zz") == 4


def test_a_query_text_is_encoded_once_per_map(db: MapDatabase) -> None:
    """The three channels and an evaluation's channel combinations search the same text
    again: the map keeps recent text embeddings (per encoder), so the text tower runs once,
    and the results are those of a fresh encode."""
    from dlgpr_core.mapdb import search as map_search

    enc = HistogramEncoder()
    calls: list[list[str]] = []
    encode = enc.encode_texts

    def counting(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return encode(texts)

    enc.encode_texts = counting
    first = db.search("a bank with a fountain", enc, k=4)
    again = RobotSearch(db, enc, None, channels=("dense",))("a bank with a fountain", 4)
    assert calls == [["a bank with a fountain"]]
    assert [(h.place_id, h.score) for h in again] == [(h.place_id, h.score) for h in first]
    for i in range(map_search.TEXT_CACHE_SIZE):
        db.search(f"text {i}", enc, k=1)
    db.search("a bank with a fountain", enc, k=4)  # evicted by the newer texts: encoded again
    assert calls.count(["a bank with a fountain"]) == 2


def test_place_gains_give_each_place_s_best_image_the_search_s_score() -> None:
    """Image R@k shifts a place's images by what the search did to the place: its best
    image then scores exactly the place's score, whether the search added other channels
    (lite: place score = best cosine + channel gains) or a fine re-ranking whose place score
    is not any image's cosine (CMPL)."""
    from dlgpr_core.evaluation.search_recall import place_gains

    images = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("b", 0.6), ("c", 0.5)]
    fused = {"b": 1.5, "a": 1.2, "c": 0.5}  # e.g. cosine + fine similarity: b ahead of a
    gains = place_gains(images, fused)
    assert gains == pytest.approx({"a": 0.3, "b": 0.7, "c": 0.0})
    best: dict[str, float] = {}
    for p, s in images:
        best[p] = max(best.get(p, -1.0), s + gains[p])
    assert best == pytest.approx(fused)  # each place's best image scores the place's score
    assert image_rank(images, gains, "b") == 0  # images of b now lead, as b leads the places
    assert image_rank(images, gains, "a") == 2  # behind both of b's (1.5 and 1.3)
    assert place_gains(images, {"zz": 1.0}) == {}  # a place without images has no gain


def test_bad_channel_and_row_names_are_refused_before_any_map_is_touched(
    db: MapDatabase, tmp_path: Path
) -> None:
    """`dlgpr map query --channels` and `dlgpr retriever search-eval --rows` name what is
    wrong and what to choose from, before a map is opened, built or annotated."""
    from typer.testing import CliRunner

    from dlgpr_core.cli import app

    runner = CliRunner()
    before = db.info().render()
    query = runner.invoke(
        app, ["map", "query", "a bank", "--map", str(db.directory), "--channels", "telepathy"]
    )
    assert isinstance(query.exception, ValueError)
    assert "must include 'dense'" in str(query.exception) and "telepathy" in str(query.exception)
    assert MapDatabase.open(db.directory).info().render() == before
    maps = tmp_path / "maps"
    ev = runner.invoke(
        app,
        ["retriever", "search-eval", "--data", str(tmp_path), "--cities", "Nowhere",
         "--maps", str(maps), "--rows", "dense,telepathy"],
    )  # fmt: skip
    assert isinstance(ev.exception, ValueError) and "telepathy" in str(ev.exception)
    assert "dense+lexical+evidence" in str(ev.exception)  # what to choose from
    assert not maps.exists()  # nothing was built or annotated
