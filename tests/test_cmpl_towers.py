"""CMPL on the frozen pretrained towers -- PLUMBING: shapes, caches, a training step, maps.

The towers are the real dlgpr-lite ones (EfficientNet-Lite0 and MiniLM from their packages),
run at a small input size on a tiny generated city; the trained parts are tiny and mostly
random. Retrieval numbers from them mean nothing: the tests check what each piece computes,
stores and refuses, and that a map re-ranks with the stored fine features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dlgpr_core.data import scan_dataset
from dlgpr_core.data.text_augment import TextAugmentConfig
from dlgpr_core.encoders.base import Encoder, FineEncoder
from dlgpr_core.encoders.factory import create_encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.retriever.features import ImageFeatures, TextFeatures
from dlgpr_core.retriever.losses import CMPLLoss
from dlgpr_core.retriever.towers.cache import ImageFeatureCache, SegmentStore
from dlgpr_core.retriever.towers.config import TowerCMPLConfig
from dlgpr_core.retriever.towers.encoder import TowerCMPLEncoder
from dlgpr_core.retriever.towers.extract import ImageTowerOutput, TowerExtractor, pooled_saliency
from dlgpr_core.retriever.towers.model import TowerCMPL, TowerDims
from dlgpr_core.retriever.towers.segments import split_segments
from dlgpr_core.retriever.towers.train import TowerTrainConfig, train
from dlgpr_core.synth import generate_city

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL: dict[str, Any] = {
    "image_size": (96, 128),
    "n_queries": 2,
    "fine_dim": 16,
    "fine_heads": 2,
    "embed_dim": 32,
    "head_hidden": 32,
}


@pytest.fixture(scope="module")
def config() -> TowerCMPLConfig:
    return TowerCMPLConfig(**SMALL)


@pytest.fixture(scope="module")
def extractor(config: TowerCMPLConfig) -> TowerExtractor:
    return TowerExtractor(config)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_city(out, "Towertown", n_places=8, views_per_place=2, seed=0, progress=False)
    generate_city(out, "Towerval", n_places=4, views_per_place=2, seed=3, progress=False)
    return out


def pictures(n: int, size: tuple[int, int] = (160, 120)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3)
    return [Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for _ in range(n)]


# -- tower features ----------------------------------------------------------------------------


def test_tower_feature_shapes(extractor: TowerExtractor) -> None:
    # any input size is resized to image_size (96 x 128): strides 8/16/32 give 12x16, 6x8, 3x4
    out = extractor.image_features(pictures(2))
    assert {s: tuple(m.shape) for s, m in out.maps.items()} == {
        8: (2, 40, 12, 16),
        16: (2, 112, 6, 8),
        32: (2, 320, 3, 4),
    }
    assert tuple(out.pooled.shape) == (2, 1280) and tuple(out.saliency.shape) == (2, 3, 4)
    assert extractor.image_channels() == {8: 40, 16: 112, 32: 320}
    # MiniLM: layers 2, 4, 6 (6 = its output, the global's input), one row per segment
    segs = extractor.segment_features(["The bank is red.", "No, there is no bench."])
    assert extractor.layers == [2, 4, 6] and tuple(segs.shape) == (2, 3, 384)
    assert tuple(extractor.segment_features([]).shape) == (0, 3, 384)


def test_pooled_saliency_is_each_cells_share_of_the_pooled_feature() -> None:
    final = torch.rand(2, 5, 3, 4)
    pooled, sal = pooled_saliency(final)
    assert torch.allclose(pooled, final.mean(dim=(2, 3)))
    # shares sum to N |g|^2 and one cell's share is its dot product with g
    assert torch.allclose(sal.sum(dim=(1, 2)), 12 * (pooled**2).sum(1), rtol=1e-5)
    assert torch.isclose(sal[1, 2, 3], final[1, :, 2, 3] @ pooled[1])


def test_segments_split_sentences_and_window_long_runs() -> None:
    assert split_segments("On the left is St. Peter's; it is red. Yes!  ") == [
        "On the left is St. Peter's;",
        "it is red.",
        "Yes!",
    ]
    words = " ".join(f"w{i}" for i in range(40))  # a transcript: no punctuation
    windows = split_segments(words, max_words=16)
    assert [len(w.split()) for w in windows] == [14, 14, 12]
    assert " ".join(windows) == words and split_segments("   ") == []


# -- caches -----------------------------------------------------------------------------------


class CountingCompute:
    """A stand-in image tower: deterministic features, counts the images it was given."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, images: list[Image.Image]) -> ImageTowerOutput:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed mid-build")
        self.calls += len(images)
        n = len(images)
        base = torch.tensor([float(np.asarray(im).mean()) for im in images]).view(n, 1, 1, 1)
        return ImageTowerOutput(
            {8: base.expand(n, 2, 4, 4).clone()},
            base.view(n, 1).expand(n, 3).clone(),
            base.view(n, 1, 1).expand(n, 2, 2).clone(),
        )


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    paths = []
    for i, im in enumerate(pictures(5, (16, 12))):
        paths.append(tmp_path / "img" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        im.save(paths[-1])
    return paths


def test_image_cache_hit_miss_on_config_change_and_atomic_write(
    tmp_path: Path, image_files: list[Path]
) -> None:
    key = {"tower": "a", "strides": [8]}
    first = CountingCompute()
    cache = ImageFeatureCache(tmp_path / "cache", "City", image_files, key)
    assert cache.build(first, batch_size=2, progress=False) and first.calls == 5
    loaded = cache.load()
    assert loaded["s8"].shape == (5, 2, 4, 4) and loaded["s8"].dtype == np.float16
    assert loaded["pooled"].shape == (5, 3) and loaded["saliency"].shape == (5, 2, 2)
    # hit: a new cache object over the same images and key computes nothing
    again = CountingCompute()
    hit = ImageFeatureCache(tmp_path / "cache", "City", image_files, key)
    assert hit.complete() and not hit.build(again, progress=False) and again.calls == 0
    assert np.array_equal(hit.load()["pooled"], loaded["pooled"])
    # miss: another tower configuration, or another image list, is another cache
    other = CountingCompute()
    changed = ImageFeatureCache(tmp_path / "cache", "City", image_files, {**key, "strides": [16]})
    assert not changed.complete() and changed.build(other, progress=False) and other.calls == 5
    fewer = ImageFeatureCache(tmp_path / "cache", "City", image_files[:4], key)
    assert fewer.directory != cache.directory and not fewer.complete()
    # atomic: a build killed half-way leaves no cache and no temporary directory behind
    crashing = ImageFeatureCache(tmp_path / "cache", "City", image_files, {"tower": "b"})
    with pytest.raises(RuntimeError, match="killed"):
        crashing.build(CountingCompute(fail_after=2), batch_size=2, progress=False)
    assert not crashing.complete() and not crashing.directory.exists()
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
    with pytest.raises(FileNotFoundError, match="build it first"):
        crashing.load()


def test_segment_store_computes_each_segment_once_and_saves_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def compute(segs: list[str]) -> torch.Tensor:
        seen.extend(segs)
        return torch.tensor([[[len(s), 1.0]] for s in segs])

    store = SegmentStore(tmp_path, {"layers": [6]})
    assert store.add(["ab", "abc", "ab"], compute, progress=False) == 2
    assert sorted(seen) == ["ab", "abc"]
    reopened = SegmentStore(tmp_path, {"layers": [6]})
    assert len(reopened) == 2 and reopened.add(["abc", "abcd"], compute, progress=False) == 1
    assert seen[-1] == "abcd"
    assert reopened.feats[reopened.rows(["abcd", "ab"])][:, 0, 0].tolist() == [4.0, 2.0]
    # another tower configuration is another file
    assert len(SegmentStore(tmp_path, {"layers": [2, 6]})) == 0
    # a crash while saving leaves the previous table, and no temporary file
    before = (tmp_path / reopened.file.name).read_bytes()

    def crash(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        reopened.add(["zzz"], compute, progress=False)
    assert (tmp_path / reopened.file.name).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [reopened.file.name]
    with pytest.raises(KeyError, match="add it first"):
        SegmentStore(tmp_path, {"layers": [6]}).rows(["never added"])


# -- model and one training step --------------------------------------------------------------

DIMS = TowerDims({8: 6, 16: 8, 32: 10}, pooled_dim=12, text_width=9, text_layers=[2, 4, 6])


def fake_batch(places: int = 6, views: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    n = places * views
    labels = torch.arange(places).repeat_interleave(views)
    place_code = torch.randn(places, 12, generator=g)
    return {
        "maps": {
            s: torch.randn(n, c, 8 // (s // 8), 8 // (s // 8), generator=g)
            for s, c in DIMS.image_channels.items()
        },
        "pooled": place_code[labels] + 0.1 * torch.randn(n, 12, generator=g),
        "saliency": torch.rand(n, 2, 2, generator=g),
        "segments": torch.randn(places, 3, 3, 9, generator=g),
        "mask": torch.tensor([[True, True, False]] * places),
        "labels": labels,
    }


def loss_of(model: TowerCMPL, loss_fn: CMPLLoss, b: dict[str, Any]) -> torch.Tensor:
    img = model.encode_image(b["maps"], b["pooled"], b["saliency"])
    txt = model.encode_text(b["segments"], b["mask"])
    idx = b["labels"]
    pair = TextFeatures(txt.global_[idx], {k: v[idx] for k, v in txt.fine.items()})
    loss, terms = loss_fn(img, pair, b["labels"])
    assert {"gs", "vpr", "ls/8", "hi/32", "total"} <= set(terms)
    return loss


def test_one_training_step_over_cached_features_decreases_the_loss() -> None:
    torch.manual_seed(0)
    config = TowerCMPLConfig(**{**SMALL, "keep_ratio": 0.5})
    model = TowerCMPL(config, DIMS)
    loss_fn = CMPLLoss(config)
    batch = fake_batch()
    img = model.encode_image(batch["maps"], batch["pooled"], batch["saliency"])
    # saliency keeps half of the cells at each level, fine features per level are [B, Q, d]
    assert {s: tuple(k.shape) for s, k in img.kept.items()} == {
        8: (12, 32),
        16: (12, 8),
        32: (12, 2),
    }
    assert tuple(img.fine[16].shape) == (12, 2, 16) and tuple(img.global_.shape) == (12, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = loss_of(model, loss_fn, batch)
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    with torch.no_grad():
        after = loss_of(model, loss_fn, batch)
    assert float(after) < float(before.detach())


def test_padding_segments_change_nothing() -> None:
    torch.manual_seed(0)
    model = TowerCMPL(TowerCMPLConfig(**SMALL), DIMS).eval()
    segs = torch.randn(1, 2, 3, 9)
    padded = torch.cat([segs, torch.randn(1, 3, 3, 9)], dim=1)
    with torch.no_grad():
        a = model.encode_text(segs, torch.tensor([[True, True]]))
        b = model.encode_text(padded, torch.tensor([[True, True, False, False, False]]))
    assert torch.allclose(a.global_, b.global_, atol=1e-6)
    assert all(torch.allclose(a.fine[lv], b.fine[lv], atol=1e-5) for lv in a.fine)
    with pytest.raises(ValueError, match="at least one segment"):
        model.encode_text(segs, torch.tensor([[False, False]]))


# -- training over a tiny city, the encoder, a map ---------------------------------------------


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("run")
    config = TowerTrainConfig(
        data_root=data_root,
        train_cities=["Towertown"],
        val_cities=["Towerval"],
        model=TowerCMPLConfig(**SMALL),
        augment=TextAugmentConfig(variants_per_place=2),
        P=4,
        K=2,
        epochs=2,
        out_dir=out,
        progress=False,
        log_every=1,
    )
    result = train(config)
    assert result.step == 4 and result.best_checkpoint == out / "best"
    assert len(result.val_history) == 2 and 0.0 <= result.val_history[-1]["score"] <= 1.0
    assert all(np.isfinite(r["loss/total"]) for r in result.history)
    yield out


def test_training_run_caches_validates_and_resumes(trained: Path, data_root: Path) -> None:
    cache = data_root / ".feature_cache" / "towers"
    assert len(list(cache.glob("Towertown-*/meta.json"))) == 1
    assert len(list(cache.glob("segments-*.npz"))) == 1
    assert (trained / "last" / "train_state.pt").is_file()
    metrics = json.loads((trained / "best" / "metrics.json").read_text())
    assert {"description/place R@10", "caption/place R@10", "augmented/place R@10"} <= set(metrics)
    # resuming a finished run trains no further step
    config = TowerTrainConfig.from_yaml(trained / "train_config.yaml")
    assert train(config).step == 4


def test_test_city_is_refused_for_selection(data_root: Path) -> None:
    from dlgpr_core.config import ConfigError

    with pytest.raises(ConfigError, match="test cities"):
        TowerTrainConfig.from_dict(
            {"data_root": str(data_root), "train_cities": ["A"], "val_cities": ["Testburg"]}
        )
    with pytest.raises(ConfigError, match="one training and one validation city"):
        TowerTrainConfig.from_dict(
            {"data_root": str(data_root), "train_cities": ["A", "B"], "val_cities": ["V"]}
        )


@pytest.fixture(scope="module")
def encoder(trained: Path) -> TowerCMPLEncoder:
    enc = create_encoder(f"cmpl:{trained / 'best'}")
    assert isinstance(enc, TowerCMPLEncoder)
    return enc


def test_encoder_is_a_fine_encoder_consistent_with_the_model_score(
    encoder: TowerCMPLEncoder, trained: Path
) -> None:
    assert isinstance(encoder, Encoder) and isinstance(encoder, FineEncoder)
    assert encoder.fine_shape == (3, 2, 16) and encoder.dim == 32
    ims = pictures(3)
    glob, fine = encoder.encode_images_with_fine(ims)
    assert glob.shape == (3, 32) and fine.shape == (3, 3, 2, 16) and fine.dtype == np.float16
    text = "I see a bank with a bench. The bank is red. No, there is no fountain."
    tglob, tfine = encoder.encode_texts_with_fine([text])
    model = encoder.model
    with torch.no_grad():
        img = ImageFeatures(
            torch.from_numpy(glob),
            {
                lv: torch.from_numpy(fine[:, i].astype(np.float32))
                for i, lv in enumerate(model.levels)
            },
        )
        txt = TextFeatures(
            torch.from_numpy(tglob),
            {lv: torch.from_numpy(tfine[:, i]) for i, lv in enumerate(model.levels)},
        )
        want = model.score(img, txt)[:, 0].numpy()
    assert np.allclose(glob @ tglob[0] + encoder.fine_scores(text, fine), want, atol=1e-3)
    assert create_encoder(f"cmpl:{trained / 'best'}").fingerprint == encoder.fingerprint
    assert encoder.fingerprint != create_encoder(f"cmpl:{trained / 'last'}").fingerprint or (
        (trained / "best" / "model.safetensors").read_bytes()
        == (trained / "last" / "model.safetensors").read_bytes()
    )


def test_map_round_trip_reranks_with_stored_fine_features(
    tmp_path: Path, data_root: Path, encoder: TowerCMPLEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = MapDatabase.create(tmp_path / "map", encoder.fingerprint, encoder.dim)
    images = scan_dataset(data_root, fmt="gsv", cities=["Towerval"])
    db.build(images, encoder, batch_size=4, progress=False, workers=1)
    assert db.stats()["images"] == 8 and db.fine_shape == (3, 2, 16)

    def boom(*_: Any) -> Any:
        raise AssertionError("a text query must not encode images")

    for name in ("encode_images", "encode_images_fine", "encode_images_with_fine"):
        monkeypatch.setattr(encoder, name, boom)
    scored: list[int] = []
    fine_scores = encoder.fine_scores

    def spy(text: Any, fine: np.ndarray) -> np.ndarray:
        scored.append(len(fine))
        return fine_scores(text, fine)

    monkeypatch.setattr(encoder, "fine_scores", spy)
    text = "A bakery with red awnings. There is a bench."
    hits = db.search(text, encoder, k=3, rerank_top=8)
    assert scored == [8] and [h.rank for h in hits] == [1, 2, 3]
    # the re-ranked score of the best place is its best image's global + fine score
    g, f = encoder.encode_texts_with_fine([text])
    stored = {h.image_id: h for h in db.search_images(g[0], k=8)}
    best = hits[0]
    assert best.image_id in stored
    assert np.isclose(
        best.score,
        stored[best.image_id].score + spy(f[0], np.stack([_stored_fine(db, best.image_id)]))[0],
        atol=1e-4,
    )
    plain = db.search(text, encoder, k=3, rerank_top=0)
    assert scored == [8, 1] and len(plain) == 3
    db.close()


def _stored_fine(db: MapDatabase, image_id: int) -> np.ndarray:
    import sqlite3

    with sqlite3.connect(db.directory / "map.sqlite") as conn:
        blob = conn.execute(
            "SELECT data FROM fine_features WHERE image_id = ?", (image_id,)
        ).fetchone()[0]
    assert db.fine_shape is not None
    return np.frombuffer(blob, dtype=np.float16).reshape(db.fine_shape)


def test_asset_export_in_float16_and_short_name(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlgpr_core.encoders import factory
    from dlgpr_core.retriever.towers.model import export_asset, load_tower_cmpl

    asset = export_asset(trained / "best", tmp_path / "dlgpr_cmpl")
    full, half = (d / "model.safetensors" for d in (trained / "best", asset))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    a, b = load_tower_cmpl(trained / "best"), load_tower_cmpl(asset)
    assert all(v.dtype == torch.float32 for v in b.state_dict().values())
    assert all(torch.allclose(a.state_dict()[k], v, atol=1e-2) for k, v in b.state_dict().items())
    monkeypatch.setattr(factory, "CMPL_ASSET", asset)
    enc = create_encoder("dlgpr-cmpl")
    assert isinstance(enc, TowerCMPLEncoder) and enc.fine_shape == (3, 2, 16)
    monkeypatch.setattr(factory, "CMPL_ASSET", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"asset .* is missing"):
        create_encoder("dlgpr-cmpl")
