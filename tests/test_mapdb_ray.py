"""Map builds on Ray Data (issue 13): a local 2-worker cluster builds the same map as a
local build (ids, vectors, evidence, refused inputs), and an interrupted Ray build resumes.

`HistogramEncoder` and `ColourAnnotator` are plumbing fixtures (see test_mapdb): what is
tested is that the distributed path stores and refuses exactly what the local one does.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_mapdb import HistogramEncoder, make_dataset, noisy_image

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb import MapDatabase, MapError
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.mapdb.index import EXACT_FILE, ExactIndex

ray = pytest.importorskip("ray")

from dlgpr_core.mapdb.distributed import RaySettings, build_with_ray  # noqa: E402


class ColourAnnotator:
    """Plumbing fixture: names an image's dominant colour; "fails" on yellow images."""

    name = "colour-test"
    version = "1"

    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem] | None]:
        out: list[list[EvidenceItem] | None] = []
        for img in images:
            r, g, b = np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0)
            if r > 150 and g > 150 and b < 100:
                out.append(None)
                continue
            colour = ["red", "green", "blue"][int(np.argmax([r, g, b]))]
            conf = round(float(max(r, g, b)) / 255, 4)
            out.append([EvidenceItem(f"a {colour} facade", conf, "building", "colour", colour)])
        return out


def colour_annotator(encoder: Encoder) -> ColourAnnotator:
    return ColourAnnotator()


class YellowPoisonEncoder(HistogramEncoder):
    """Fails (after a moment, so that earlier batches finish) on a batch with a yellow image."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if ColourAnnotator().annotate(images).count(None):
            time.sleep(1.0)
            raise RuntimeError("simulated worker crash")
        return super().encode_images(images)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local 2-worker Ray cluster for the module; always shut down."""
    for name in ("test_mapdb", __name__):  # fixtures are not importable on the workers
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def dataset_with_bad_inputs(root: Path) -> Path:
    csv_path = make_dataset(root, places=5, per_place=3)
    (root / "img" / "corrupt.png").write_bytes(b"not an image")
    (root / "img" / "copy.png").write_bytes((root / "img" / "p0_0.png").read_bytes())
    noisy_image((90, 90, 90), seed=5).resize((64, 64)).save(root / "img" / "big.jpg")
    (root / "img" / "truncated.jpg").write_bytes((root / "img" / "big.jpg").read_bytes()[:-300])
    with csv_path.open("a") as handle:
        handle.write("img/corrupt.png,p9,1,1,\n")
        handle.write("img/copy.png,p9,1,1,\n")
        handle.write("img/truncated.jpg,p9,1,1,\n")
        handle.write("img/missing.png,p9,1,1,\n")
        handle.write("img/p1_0.png,p1,40,-70,\n")  # the same path twice
    return csv_path


def contents(map_dir: Path) -> dict[str, Any]:
    """Everything a build decides: rows with ids, vectors by id, evidence, refusals."""
    with sqlite3.connect(map_dir / "map.sqlite") as conn:
        images = conn.execute(
            "SELECT id, path, sha256, place_id, lat, lon, heading FROM images ORDER BY id"
        ).fetchall()
        evidence = conn.execute(
            "SELECT image_id, annotator, phrase, confidence, category, attribute, value "
            "FROM evidence ORDER BY image_id, phrase"
        ).fetchall()
        runs = conn.execute(
            "SELECT image_id, annotator, version FROM evidence_runs ORDER BY image_id"
        ).fetchall()
        skipped = conn.execute("SELECT source, reason FROM skipped ORDER BY id").fetchall()
    conn.close()
    exact = ExactIndex.load(map_dir / EXACT_FILE, 48)
    order = np.argsort(exact.ids())
    return {
        "images": images,
        "ids": exact.ids()[order].tolist(),
        "vectors": exact.vectors()[order],
        "evidence": evidence,
        "runs": runs,
        "skipped": skipped,
    }


def assert_same_map(a: dict[str, Any], b: dict[str, Any], same_refusal_order: bool = True) -> None:
    assert a["images"] == b["images"] and a["ids"] == b["ids"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-6)
    assert a["evidence"] == b["evidence"] and a["runs"] == b["runs"]
    if same_refusal_order:
        assert a["skipped"] == b["skipped"]
    else:
        assert sorted(a["skipped"]) == sorted(b["skipped"])


def build_locally(map_dir: Path, csv_path: Path) -> tuple[Any, Any]:
    enc = HistogramEncoder()
    with MapDatabase.create(map_dir, enc.fingerprint, enc.dim) as db:
        report = db.build(scan_csv(csv_path), enc, batch_size=4, progress=False)
        evidence = db.annotate(ColourAnnotator(), batch_size=4, progress=False)
    return report, evidence


def test_ray_build_equals_local_build(local_ray: None, tmp_path: Path) -> None:
    csv_path = dataset_with_bad_inputs(tmp_path / "ds")
    local, local_evidence = build_locally(tmp_path / "local", csv_path)
    enc = HistogramEncoder()
    with MapDatabase.create(tmp_path / "ray", enc.fingerprint, enc.dim) as db:
        report = build_with_ray(
            db,
            scan_csv(csv_path),
            enc,
            RaySettings(workers=2),
            HistogramEncoder,
            ColourAnnotator(),
            colour_annotator,
            batch_size=4,
            annotate_batch_size=4,
            progress=False,
        )
    assert (report.workers, report.gpus_per_worker) == (2, 0.0)
    assert (report.build.added, local.added) == (15, 15)
    assert report.build.skipped == local.skipped  # same refusals, same reasons, same order
    reasons = {s.reason.split(":")[0] for s in report.build.skipped}
    assert reasons == {"image file not found", "corrupt image", "duplicate image", "duplicate path"}
    assert report.evidence is not None
    assert report.evidence.annotated == local_evidence.annotated == 12  # 3 yellow "fail"
    assert report.evidence.unreadable == local_evidence.unreadable
    assert report.evidence.items == local_evidence.items
    assert "2 Ray workers (CPU)" in report.render()
    assert_same_map(contents(tmp_path / "ray"), contents(tmp_path / "local"))


def test_interrupted_ray_build_resumes_to_the_local_map(local_ray: None, tmp_path: Path) -> None:
    csv_path = dataset_with_bad_inputs(tmp_path / "ds")
    build_locally(tmp_path / "local", csv_path)
    enc = HistogramEncoder()
    settings = RaySettings(workers=2)
    with MapDatabase.create(tmp_path / "ray", enc.fingerprint, enc.dim) as db:
        with pytest.raises(MapError, match=r"failed in a worker: .*simulated worker crash"):
            build_with_ray(
                db,
                scan_csv(csv_path),
                enc,
                settings,
                YellowPoisonEncoder,
                ColourAnnotator(),
                colour_annotator,
                batch_size=4,
                progress=False,
                checkpoint_seconds=0.0,
            )
        kept = db.stats()["images"]
        assert 0 < kept < 15  # batches before the crash are kept, with their evidence
        assert len(db.evidence.todo("colour-test", "1")) <= 3
        report = build_with_ray(
            db,
            scan_csv(csv_path),
            enc,
            settings,
            HistogramEncoder,
            ColourAnnotator(),
            colour_annotator,
            batch_size=4,
            annotate_batch_size=4,
            progress=False,
        )
        assert (report.build.already_present, report.build.added) == (kept, 15 - kept)
    assert_same_map(
        contents(tmp_path / "ray"), contents(tmp_path / "local"), same_refusal_order=False
    )


def test_ray_build_needs_both_annotator_halves(tmp_path: Path) -> None:
    enc = HistogramEncoder()
    with (
        MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim) as db,
        pytest.raises(MapError, match="both the annotator and its worker factory"),
    ):
        build_with_ray(db, scan_csv(make_dataset(tmp_path / "ds")), enc, RaySettings(),
                       HistogramEncoder, ColourAnnotator())  # fmt: skip
