"""CMPL training plumbing: data module, sampler, loop, resume, config, validation, DDP.

This is a plumbing test. The model is the 4-block synth_tiny CLIP with RANDOM weights (no hub,
no pretrained file) and the data is a 12-place SynthCities city generated on the fly, so the
numbers say nothing about retrieval quality; the tests check that batches are right, that
optimisation moves the loss, that a resumed run is bit-for-bit the uninterrupted one, and
that configs fail loudly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlgpr_core.retriever import create_cmpl, image_preprocess
from dlgpr_core.retriever.data import (
    AugmentConfig,
    PlaceBatchSampler,
    PlaceCollator,
    PlaceTextDataset,
    read_places,
    split_places,
    train_transform,
)
from dlgpr_core.retriever.evaluation import place_recall, recall_from_features
from dlgpr_core.retriever.model import ImageFeatures, TextFeatures
from dlgpr_core.retriever.train import ConfigError, TrainConfig, aux_loss_weight, train
from dlgpr_core.synth import generate_city

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "training" / "configs" / "synth_tiny.yaml"
ABLATION = REPO / "training" / "configs" / "ablation"
CITY = "Traintown"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_city(out, CITY, n_places=12, views_per_place=3, seed=0, progress=False)
    return out


def tiny_config(root: Path, out: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_yaml(TINY, [f"data_root={root}", f"out_dir={out}", *overrides])


# -- data -------------------------------------------------------------------------------------


def test_places_and_split(root: Path) -> None:
    places = read_places(root, [CITY.lower()])  # case-insensitive city lookup
    assert len(places) == 12
    assert all(len(p.images) == 3 and p.description and p.caption for p in places)
    train_p, val_p = split_places(root, [CITY], val_fraction=0.25, seed=0)
    assert len(val_p) == 3 and len(train_p) == 9
    assert not {p.key for p in train_p} & {p.key for p in val_p}
    with pytest.raises(ValueError, match="both in train and val"):
        split_places(root, [CITY], val_cities=[CITY])


def test_sampler_pk_labels_and_disjoint_shards(root: Path) -> None:
    places = read_places(root, [CITY])
    ds = PlaceTextDataset(places, train_transform(64, AugmentConfig()), use_caption=True)
    sizes = [len(p.images) for p in places]
    n_p, n_k = 3, 4  # K > 3 views: repeats drawn with replacement
    single = PlaceBatchSampler(sizes, n_p, n_k, seed=1, n_text_views=2, caption_prob=0.5)
    assert len(single) == 4
    for batch in single:
        assert len(batch) == n_p * n_k
        labels = [ds.samples[key.image][0] for key in batch]
        counts = Counter(labels)
        assert len(counts) == n_p and set(counts.values()) == {n_k}
        for key in batch:  # every view of a place is used before any repeat
            assert ds.samples[key.image][1] in places[ds.samples[key.image][0]].images
        assert {ds.samples[k.image][0] for k in batch[:n_k]} == {labels[0]}

    shards = [
        PlaceBatchSampler(sizes, n_p, n_k, seed=1, rank=r, world_size=2, n_text_views=2)
        for r in (0, 1)
    ]
    for epoch in (0, 1):
        seen = []
        for s in shards:
            s.set_epoch(epoch)
            seen.append({ds.samples[k.image][0] for b in s for k in b})
        assert len(shards[0]) == len(shards[1]) == 2
        assert not seen[0] & seen[1]
        assert len(seen[0]) == len(seen[1]) == 6
    assert shards[0].epoch_places(0) != shards[0].epoch_places(1)  # reshuffled per epoch

    # Resuming mid-epoch yields exactly the remaining batches, keys included.
    single.set_epoch(3)
    full = list(single)
    single.set_epoch(3, start_batch=2)
    assert list(single) == full[2:]

    # Collation: n_p distinct texts (descriptions and captions), one row per image.
    torch.manual_seed(0)
    model = create_cmpl(tiny_config(root, root / "unused").model, allow_random=True)
    collated = PlaceCollator(ds.texts, model.tokenizer)([ds[k] for k in full[0]])
    assert collated.images.shape == (n_p * n_k, 3, 64, 64)
    assert collated.labels.tolist() == [ds.samples[k.image][0] for k in full[0]]
    assert collated.text.n_texts == len(collated.texts) <= 2 * n_p
    for i, k in enumerate(full[0]):
        place = places[collated.labels[i]]
        expected = place.caption if k.text else place.description
        assert collated.texts[collated.text_index[i]] == expected
    # Augmentation is a function of the key's seed, not of global RNG state.
    torch.manual_seed(123)
    assert torch.equal(ds[full[0][0]][0], collated.images[0])


# -- training loop ----------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss(root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        root, tmp_path, "val_fraction=0", "P=12", "max_steps=6", "warmup_steps=0",
        "augment.enabled=false",
    )  # fmt: skip
    result = train(cfg)
    losses = [row["loss/total"] for row in result.history]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert {"loss/gs", "loss/vpr", "loss/ls/4", "loss/hi/4", "lr", "steps_per_s"} <= set(
        result.history[0]
    )


def test_aux_loss_weight_schedule() -> None:
    assert [aux_loss_weight(s, 0, 0) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [aux_loss_weight(s, 2, 0) for s in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [aux_loss_weight(s, 1, 4) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_gs_only_warmup_is_logged(root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        root, tmp_path, "val_fraction=0", "gs_only_warmup_steps=2", "aux_ramp_steps=2"
    )
    result = train(cfg)
    assert [r["aux_weight"] for r in result.history] == [0.0, 0.0, 0.5, 1.0]
    # The warm-up totals are the global term alone (lambda_gs = 1); the others are reported.
    for row in result.history[:2]:
        assert row["loss/total"] == pytest.approx(row["loss/gs"], rel=1e-6)
        assert "loss/vpr" in row and "loss/ls/4" in row


def test_resume_reproduces_the_uninterrupted_run(root: Path, tmp_path: Path) -> None:
    full = train(tiny_config(root, tmp_path / "full"))
    assert [r["step"] for r in full.history] == [1, 2, 3, 4]

    part = tiny_config(root, tmp_path / "part")
    first = train(part, stop_after_steps=1)  # "preempted" mid-epoch 0
    assert first.step == 1 and first.last_checkpoint is not None
    second = train(part)  # auto-resume from out_dir/last
    assert [r["step"] for r in second.history] == [2, 3, 4]

    def losses(rows: list[dict[str, float]]) -> list[list[float]]:
        return [[v for k, v in sorted(r.items()) if k.startswith("loss/")] for r in rows]

    resumed = losses(first.history + second.history)
    torch.testing.assert_close(
        torch.tensor(resumed), torch.tensor(losses(full.history)), rtol=1e-5, atol=1e-6
    )
    w_full = load_file(tmp_path / "full" / "last" / "model.safetensors")
    w_part = load_file(tmp_path / "part" / "last" / "model.safetensors")
    for name, t in w_full.items():
        torch.testing.assert_close(w_part[name], t, rtol=1e-5, atol=1e-6)
    # The CSV of the resumed run holds each step once.
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert [v["step"] for v in full.val_history] == [2, 4]
    assert full.best_checkpoint is not None and 0.0 <= (full.best_r1 or 0.0) <= 1.0


def _crash_on(monkeypatch: pytest.MonkeyPatch, src_name: str) -> None:
    """Make the rename whose source is named `src_name` fail, as a crash there would: both
    os.rename and os.replace (Path.rename and Path.replace call them)."""
    real_rename, real_replace = os.rename, os.replace

    def flaky(real):
        def call(src, dst, *args, **kwargs):
            if Path(src).name == src_name:
                raise OSError(f"simulated crash renaming {src_name}")
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "rename", flaky(real_rename))
    monkeypatch.setattr(os, "replace", flaky(real_replace))


def test_a_crash_between_the_checkpoint_renames_resumes_from_the_survivor(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The save swaps `last` by two renames; a crash between them used to leave no `last`
    and the next run silently started again from step 0. Now it resumes from the finished
    new copy and says so."""
    cfg = tiny_config(root, tmp_path, "val_fraction=0")
    assert train(cfg, stop_after_steps=1).step == 1
    with monkeypatch.context() as m:
        _crash_on(m, "last.tmp")  # last -> last.old done, last.tmp -> last "crashes"
        with pytest.raises(OSError, match="simulated crash"):
            train(cfg, stop_after_steps=2)  # the checkpoint of step 2
    assert not (tmp_path / "last").exists()
    with caplog.at_level("WARNING"):
        resumed = train(cfg)
    assert [r["step"] for r in resumed.history] == [3, 4]  # step 2 was saved whole
    assert "restored last.tmp" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("last")) == ["last"]


def test_an_unloadable_checkpoint_is_refused_not_restarted(root: Path, tmp_path: Path) -> None:
    from dlgpr_core.retriever.train.checkpoint import CheckpointError

    cfg = tiny_config(root, tmp_path, "val_fraction=0")
    train(cfg, stop_after_steps=1)
    state = tmp_path / "last" / "train_state.pt"
    state.write_bytes(b"torn")
    with pytest.raises(CheckpointError, match=r"cannot be loaded.*delete it"):
        train(cfg)
    state.unlink()
    with pytest.raises(CheckpointError, match=r"holds no train_state\.pt"):
        train(cfg)
    # resume=false is the explicit fresh start.
    assert train(tiny_config(root, tmp_path, "val_fraction=0", "resume=false")).step == 4


def test_best_is_replaced_whole(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`best` used to be written in place: a crash mid-write left a torn model under the
    name of the previous best. Now the previous best survives whole."""
    from dlgpr_core.retriever import factory
    from dlgpr_core.retriever.factory import load_cmpl

    train(tiny_config(root, tmp_path))
    best = tmp_path / "best"
    before = (best / "metrics.json").read_text()
    real = factory.save_model

    def torn(model, filename, *args, **kwargs):
        if "best" in str(filename):
            Path(filename).write_bytes(b"half a model")
            raise OSError("simulated crash writing best")
        return real(model, filename, *args, **kwargs)

    monkeypatch.setattr(factory, "save_model", torn)
    with pytest.raises(OSError, match="simulated crash"):
        train(tiny_config(root, tmp_path, "resume=false"))  # a fresh run's first best
    monkeypatch.undo()
    assert (best / "metrics.json").read_text() == before
    load_cmpl(best)  # whole


# -- config -----------------------------------------------------------------------------------


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(
        TINY,
        ["lr=3e-4", "train_cities=[A, B]", "model.n_queries=2", "augment.enabled=false", "P=5"],
    )
    assert cfg.lr == 3e-4 and cfg.train_cities == ["A", "B"] and cfg.P == 5
    assert cfg.model.n_queries == 2 and not cfg.augment.enabled
    assert cfg.model.fine_dim == 32  # untouched nested keys survive

    hsdm = TrainConfig.from_yaml(ABLATION / "hsdm.yaml")
    assert hsdm.ablation == "+hsdm" and hsdm.model.use_fine and not hsdm.model.use_hi
    assert not hsdm.model.last_level_only and hsdm.model.levels == [2, 4]  # synth_default
    base = TrainConfig.from_yaml(ABLATION / "baseline.yaml")
    assert not base.model.use_fine and not base.model.use_vpr
    assert TrainConfig.from_yaml(ABLATION / "full.yaml").model.use_hi

    # model given as a path, relative to the config naming it
    model_yaml = tmp_path / "m.yaml"
    TrainConfig.from_yaml(TINY).model.save(model_yaml)
    (tmp_path / "c.yaml").write_text(
        "data_root: x\ntrain_cities: [A]\nmodel: m.yaml\nallow_random: true\n"
    )
    by_path = TrainConfig.from_yaml(tmp_path / "c.yaml", ["model.fine_heads=2"])
    assert by_path.model.n_queries == 4 and by_path.model.fine_heads == 2

    # a dumped config reloads to the same config
    cfg.save(tmp_path / "dump.yaml")
    assert TrainConfig.from_yaml(tmp_path / "dump.yaml") == cfg


def test_invalid_keys_give_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' \(did you mean 'lr'\?\)"):
        TrainConfig.from_yaml(TINY, ["lrr=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown key 'model.n_querys'.*'n_queries'"):
        TrainConfig.from_yaml(TINY, ["model.n_querys=3"])
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig.from_yaml(TINY, ["precision=fp8"])
    with pytest.raises(ConfigError, match="not key=value"):
        TrainConfig.from_yaml(TINY, ["lr"])
    with pytest.raises(ConfigError, match="unknown ablation"):
        TrainConfig.from_yaml(TINY, ["ablation=+nothing"])


# -- validation -------------------------------------------------------------------------------


def test_place_recall_bounds_and_order(root: Path) -> None:
    torch.manual_seed(0)
    model = create_cmpl(TrainConfig.from_yaml(TINY).model, allow_random=True).eval()
    val = PlaceTextDataset(read_places(root, [CITY]), image_preprocess(model))
    for top in (0, 5, None):
        r = place_recall(model, val, ks=(1, 5, 10), rerank_top=top)
        assert all(0.0 <= v <= 1.0 for v in r.values())
        assert r["R@1"] <= r["R@5"] <= r["R@10"]

    # Exact features: image i of place p and query p are the same unit vector -> R@1 = 1.
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    img_place = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    img = ImageFeatures(emb[img_place])
    txt = TextFeatures(emb)
    perfect = recall_from_features(model, img, img_place, txt, torch.arange(4), ks=(1, 2))
    assert perfect == {"R@1": 1.0, "R@2": 1.0}


# -- DDP --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(root: Path, tmp_path: Path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "training" / "train_retriever.py"), "--config", str(TINY),
        f"data_root={root}", f"out_dir={tmp_path}", "max_steps=2", "device=cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = [p for p in tmp_path.iterdir() if (p / "train_state.pt").exists()]
    assert [p.name for p in checkpoints] == ["last"]
    state = torch.load(tmp_path / "last" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per step, written by rank 0 only
