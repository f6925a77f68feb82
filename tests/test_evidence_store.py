"""Evidence in the map: stored beside the images, batched, resumable, incremental, versioned.

`ColourAnnotator` is a PLUMBING FIXTURE, not an evidence model: it names the dominant colour
of an image, so storage and bookkeeping are checked with values that can be predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_mapdb import COLOURS, HistogramEncoder, make_dataset

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.mapdb import MapDatabase
from dlgpr_core.mapdb.evidence import EvidenceItem

NAMES = {0: "red", 1: "green", 2: "blue"}


class ColourAnnotator:
    """Plumbing fixture (see module docstring); can crash after some batches."""

    name = "colour"

    def __init__(self, version: str = "v1", fail_after: int | None = None) -> None:
        self.version = version
        self.fail_after = fail_after
        self.batches = 0
        self.seen = 0

    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem]]:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("simulated crash inside the annotator")
        self.batches += 1
        self.seen += len(images)
        out = []
        for img in images:
            channel = int(np.asarray(img).reshape(-1, 3).mean(axis=0).argmax())
            colour = NAMES.get(channel, "")
            # green images "show nothing": done, but with no item (evidence of absence)
            seen = [EvidenceItem(f"a {colour} wall", 0.9, "wall", "colour", colour, (0, 0, 4, 4))]
            out.append(seen if colour and colour != "green" else [])
        return out


@pytest.fixture
def db(tmp_path: Path) -> MapDatabase:
    enc = HistogramEncoder()
    db = MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim)
    db.build(scan_csv(make_dataset(tmp_path / "ds", places=3)), enc, progress=False)
    return db


def test_annotate_stores_items_per_place(db: MapDatabase) -> None:
    ann = ColourAnnotator()
    report = db.annotate(ann, batch_size=4, progress=False)
    assert (report.annotated, report.already_done, report.items) == (9, 0, 6)
    assert "9 images annotated" in report.render()
    by_place = db.evidence.for_places("colour", ["p0", "p1", "p2", "nowhere"])
    assert sorted(by_place) == ["p0", "p1", "p2"]
    assert [im.items for im in by_place["p1"]] == [[], [], []]
    for i, place in ((0, "p0"), (2, "p2")):
        images = by_place[place]
        assert len(images) == 3 and all(im.path.startswith(f"img/{place}_") for im in images)
        (item,) = images[0].items
        assert (item.category, item.attribute, item.value) == ("wall", "colour", NAMES[i])
        assert item.bbox == (0, 0, 4, 4) and item.confidence == pytest.approx(0.9)
    (run,) = db.evidence.runs()
    assert (run.annotator, run.versions, run.items) == ("colour", {"v1": 9}, 6)
    # a second run does nothing; a new version redoes every image, replacing its items
    assert db.annotate(ann, progress=False).annotated == 0
    assert db.annotate(ColourAnnotator("v2"), progress=False).annotated == 9
    (run,) = db.evidence.runs()
    assert run.versions == {"v2": 9} and run.items == 6


def test_annotation_resumes_after_a_crash_and_adds_only_new_images(
    db: MapDatabase, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="simulated crash"):
        db.annotate(ColourAnnotator(fail_after=1), batch_size=2, progress=False)
    (run,) = db.evidence.runs()
    assert run.images == 2  # the first batch committed
    ann = ColourAnnotator()
    report = db.annotate(ann, batch_size=2, progress=False)
    assert (report.annotated, report.already_done, ann.seen) == (7, 2, 7)
    # new images of the map are annotated by the next run, and only they
    enc = HistogramEncoder()
    db.build(
        scan_csv(make_dataset(tmp_path / "ds2", places=3, start=5, seed=7)), enc, progress=False
    )
    ann = ColourAnnotator()
    assert db.annotate(ann, progress=False).annotated == 9 and ann.seen == 9
    assert db.evidence.runs()[0].images == 18


def test_unreadable_images_are_reported_and_stay_to_do(db: MapDatabase, tmp_path: Path) -> None:
    victim = tmp_path / "ds" / "img" / "p1_0.png"
    victim.write_bytes(b"not a png")
    report = db.annotate(ColourAnnotator(), progress=False)
    assert report.annotated == 8 and len(report.unreadable) == 1
    assert report.unreadable[0][0].endswith("p1_0.png") and "corrupt" in report.unreadable[0][1]
    Image.new("RGB", (24, 24), COLOURS[1]).save(victim)
    assert db.annotate(ColourAnnotator(), progress=False).annotated == 1


def test_confidence_and_phrase_are_checked() -> None:
    with pytest.raises(ValueError, match="confidence"):
        EvidenceItem("a bank", 1.5)
    with pytest.raises(ValueError, match="phrase"):
        EvidenceItem("  ", 0.5)
