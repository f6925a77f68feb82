"""CMPLEncoder, fine re-ranking maps and the static evaluation -- PLUMBING only.

The retriever is a tiny RANDOM-INIT CMPL (4-block ViT at 64 px, 4-block text tower) saved with
save_cmpl; nothing is downloaded. Recall numbers from it mean nothing: the tests check shapes,
dtypes, consistency with CMPL.score, what the map stores and that queries never re-encode
images.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dlgpr_core.cli import app
from dlgpr_core.data import scan_dataset
from dlgpr_core.encoders.base import Encoder, FineEncoder
from dlgpr_core.encoders.factory import create_encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.retriever import CMPLConfig, create_cmpl, save_cmpl
from dlgpr_core.retriever.encoder import CMPLEncoder
from dlgpr_core.retriever.model import ImageFeatures, TextFeatures
from dlgpr_core.retriever.static_eval import static_eval
from dlgpr_core.synth import generate_city

TINY_BACKBONE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
}
CITY = "Evaltown"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = CMPLConfig(
        backbone=TINY_BACKBONE, n_queries=4, fine_dim=32, fine_heads=4, levels=[2, 4]
    )
    return save_cmpl(create_cmpl(config, allow_random=True), tmp_path_factory.mktemp("cmpl"))


@pytest.fixture(scope="module")
def encoder(ckpt: Path) -> CMPLEncoder:
    enc = create_encoder(f"cmpl:{ckpt}")
    assert isinstance(enc, CMPLEncoder)
    return enc


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_city(out, CITY, n_places=6, views_per_place=2, seed=0, progress=False)
    return out


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_encoder_shapes_fingerprint_and_score_consistency(ckpt: Path, encoder: CMPLEncoder) -> None:
    assert isinstance(encoder, Encoder) and isinstance(encoder, FineEncoder)
    assert encoder.fine_shape == (2, 4, 32)
    ims = pictures(3)
    glob, fine = encoder.encode_images_with_fine(ims)
    assert glob.shape == (3, encoder.dim) and glob.dtype == np.float32
    assert np.allclose(np.linalg.norm(glob, axis=1), 1.0, atol=1e-5)
    assert fine.shape == (3, 2, 4, 32) and fine.dtype == np.float16
    assert np.array_equal(encoder.encode_images_fine(ims), fine)
    text = "a red brick church with a clock tower"
    tglob = encoder.encode_texts([text])
    assert tglob.shape == (1, encoder.dim) and tglob.dtype == np.float32
    # global + fine_scores == CMPL.score (up to float16 storage of the image features)
    model = encoder.model
    with torch.no_grad():
        tok = model.tokenize([text])
        img = ImageFeatures(
            torch.from_numpy(glob),
            {
                lv: torch.from_numpy(fine[:, i].astype(np.float32))
                for i, lv in enumerate(model.levels)
            },
        )
        txt = model.encode_text(tok)
        want = model.score(img, TextFeatures(txt.global_, txt.fine))[:, 0].numpy()
    got = glob @ tglob[0] + encoder.fine_scores(text, fine)
    assert np.allclose(got, want, atol=1e-3)
    # fingerprint: stable across loads, changes with the weights
    assert create_encoder(f"cmpl:{ckpt}").fingerprint == encoder.fingerprint


def build_map(tmp: Path, city: Path, enc: Encoder, **kw: Any) -> MapDatabase:
    db = MapDatabase.create(tmp / "map", enc.fingerprint, enc.dim)
    db.build(scan_dataset(city, fmt="gsv"), enc, batch_size=4, progress=False, workers=1, **kw)
    return db


def fine_rows(db: MapDatabase) -> int:
    with sqlite3.connect(db.directory / "map.sqlite") as conn:
        return int(conn.execute("SELECT count(*) FROM fine_features").fetchone()[0])


def test_map_stores_fine_features_and_reranks_without_encoding_images(
    tmp_path: Path, city: Path, encoder: CMPLEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = build_map(tmp_path, city, encoder)
    n = db.stats()["images"]
    assert n == 12 and fine_rows(db) == n and db.stats()["indexed"] == n
    info = db.info()
    assert info.fine_bytes_per_image == 2 * 4 * 32 * 2
    assert "fine features" in info.render()

    def boom(*_: Any) -> Any:
        raise AssertionError("a text query must not encode images")

    for name in ("encode_images", "encode_images_fine", "encode_images_with_fine"):
        monkeypatch.setattr(encoder, name, boom)
    text = "a shop with a green awning"
    hits = db.search(text, encoder, k=3, rerank_top=8)
    assert len(hits) == 3 and len({h.place_id for h in hits}) == 3
    assert [h.rank for h in hits] == [1, 2, 3]
    # the best place's score is its best image's global + fine score
    plain = db.search(text, encoder, k=3, rerank_top=0)
    assert len(plain) == 3
    db.close()


class FailingAfter:
    """Wraps the FineEncoder; raises on the n-th image batch (a crash mid-build)."""

    def __init__(self, inner: CMPLEncoder, after: int) -> None:
        self.inner, self.after, self.calls = inner, after, 0
        self.fingerprint, self.dim, self.fine_shape = inner.fingerprint, inner.dim, inner.fine_shape

    def encode_images_with_fine(self, images: Sequence[Image.Image]) -> Any:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("simulated crash")
        return self.inner.encode_images_with_fine(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_crash_and_lost_fine_rows_are_re_encoded(
    tmp_path: Path, city: Path, encoder: CMPLEncoder
) -> None:
    failing = FailingAfter(encoder, after=1)
    assert isinstance(failing, FineEncoder)
    with pytest.raises(RuntimeError, match="simulated"):
        build_map(tmp_path, city, failing)
    db = MapDatabase.open(tmp_path / "map")
    stored = db.stats()["images"]
    assert stored == 4 and fine_rows(db) == 4  # the finished batch, with its features
    db.build(scan_dataset(city, fmt="gsv"), encoder, batch_size=4, progress=False, workers=1)
    assert db.stats()["images"] == 12 and fine_rows(db) == 12
    db.close()
    # Fine rows lost (e.g. a hand-edited map): reopening marks them pending, a build restores.
    with sqlite3.connect(tmp_path / "map" / "map.sqlite") as conn:
        conn.execute("DELETE FROM fine_features WHERE image_id IN (SELECT id FROM images LIMIT 3)")
    db = MapDatabase.open(tmp_path / "map")
    assert db.stats()["pending"] == 3 and db.stats()["indexed"] == 9
    report = db.build(scan_dataset(city, fmt="gsv"), encoder, progress=False, workers=1)
    assert report.reencoded == 3 and fine_rows(db) == 12 and db.stats()["indexed"] == 12
    db.close()


def test_static_eval_writes_markdown_and_json(
    tmp_path: Path, city: Path, encoder: CMPLEncoder
) -> None:
    table = static_eval({"cmpl": encoder}, city, [CITY], ["generator", "caption"], rerank_top=5)
    md, js = table.write(tmp_path / "res" / "static_eval")
    text = md.read_text()
    assert text.startswith("| encoder | city | variant")
    assert "| place R@1 |" in text and "| image R@10 |" in text
    assert [(r.city, r.variant) for r in table.rows] == [(CITY, "generator"), (CITY, "caption")]
    for row in table.rows:
        p, i = row.place_recall, row.image_recall
        assert all(0.0 <= v <= 1.0 for v in [*p.values(), *i.values()])
        assert p["R@1"] <= p["R@5"] <= p["R@10"] == 1.0  # 6 places: R@10 covers them all
        assert i["R@1"] <= i["R@5"] <= i["R@10"]
        assert all(i[k] <= p[k] for k in p)  # a place ahead puts an image ahead
    payload = json.loads(js.read_text())
    assert set(payload["rows"][0]) >= {"place_recall", "image_recall"}
    assert "image R@k" in payload["meta"]["protocol"]


def test_cli_eval_prints_labelled_place_and_image_recall(
    tmp_path: Path, city: Path, ckpt: Path
) -> None:
    out = tmp_path / "cli_eval"
    result = CliRunner().invoke(
        app,
        [
            "retriever",
            "eval",
            "--data",
            str(city),
            "--cities",
            CITY,
            "--encoder",
            f"cmpl:{ckpt}",
            "--variants",
            "generator",
            "--rerank-top",
            "5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    head = next(line for line in result.output.splitlines() if line.startswith("| encoder"))
    assert "| place R@1 | place R@5 | place R@10 | image R@1 | image R@5 | image R@10 |" in head
    assert "image R@k: an image of the target place" in result.output


def test_cli_help() -> None:
    runner = CliRunner()
    for cmd in (["retriever", "eval", "--help"], ["retriever", "ablation", "--help"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output
