"""Training the evidence heads and the sign reader, with validation-city selection and
calibration, and writing the files the annotator loads.

The trunk is frozen, so each city's features are computed once (`features.FeatureCache`)
and an epoch over 4,000 images is a pass of small convolutions (about 20 s on 2 idle
cores). After every epoch the heads are scored on the validation city
(`validation.validation_metrics`) and the best epoch is kept; presence (Platt, per
category) and attribute temperatures are then fitted on the same city (`calibration`), the
sign reader is trained on strips the heads choose (`reader_training`), and the run
directory gets `evidence_lite.json` and `evidence_lite_heads.safetensors`. The held-out
test city is never read here.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dlgpr_core.mapdb.evidence import ImageEvidence

from .annotator import ASSET_HEADS, ASSET_JSON, LearnedAnnotator
from .calibration import fit_calibration, fit_kinds
from .config import EvidenceTrainConfig
from .dataset import Batch, CityData, batches, concat, prepare_city
from .decode import READER, Calibration, raw_presence, reading_items
from .features import FrozenTower
from .model import NEG, EvidenceHeads, HeadOutputs, pool_attribute
from .reader_training import (
    city_kinds,
    city_signs,
    fit_reader_temperature,
    read_pairs,
    sign_samples,
    train_reader,
)
from .targets import IGNORE
from .validation import city_outputs, read_city, validation_metrics
from .vocab import LabelVocab

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


# -- losses ----------------------------------------------------------------------------------


def _element_groups(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, one group per element owning cells: (log-weights (B, E, H, W), the
    element's class (B, E), valid (B, E))."""
    n = int(batch.elements.max()) + 1 if batch.elements.numel() else 0
    n = max(n, 1)
    ids = torch.arange(n).view(1, n, 1, 1)
    own = batch.elements.unsqueeze(1) == ids  # (B, E, H, W)
    valid = own.flatten(2).any(-1)
    log_w = torch.where(own, 0.0, NEG)
    cls = torch.where(own, batch.classes.unsqueeze(1), 0).flatten(2).amax(-1)
    return log_w, cls, valid


def _predicted_weights(classes: torch.Tensor, element_class: torch.Tensor) -> torch.Tensor:
    """Per image and element, log P(element's category | cell) from the category head,
    detached (B, E, H, W): the weights reading pools an element's attributes with
    (`model.category_log_weights`, there floored at 1e-6). The category head is not taught
    to shape them; the attribute heads learn to read through them, neighbouring buildings'
    cells included."""
    log_cls = torch.log_softmax(classes.detach().float(), 1)
    b, e = element_class.shape
    h, w = log_cls.shape[-2:]
    return log_cls.gather(1, element_class.view(b, e, 1, 1).expand(-1, -1, h, w))


def class_weights(classes: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
    """Per-class CE weights frequency^-power, normalised to a mean of 1 over the cells: a
    mailbox owns 0.1% of the cells and the background 65%, so unweighted CE learns to call
    small things background."""
    counts = np.bincount(classes.ravel(), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    w = w * counts.sum() / max(float((w * counts).sum()), 1e-9)
    return torch.tensor(w, dtype=torch.float32)


def losses(
    model: EvidenceHeads,
    out: HeadOutputs,
    batch: Batch,
    config: EvidenceTrainConfig,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Category CE per cell (class-weighted); presence BCE per image and category on the
    largest cell probability (the statistic the annotator thresholds); attribute CE per cell
    (values masked to the cell's category) and, with attention pooling, per element (the
    pooled distribution the annotator reads), pooled over the element's own cells and, with
    `predicted_pooling_weight`, also as reading pools (over every cell weighted by the
    predicted P(category | cell)); street CE per image."""
    ls = config.label_smoothing
    parts: dict[str, torch.Tensor] = {
        "classes": F.cross_entropy(out.classes, batch.classes, weight=weights, label_smoothing=ls)
    }
    if config.presence_weight > 0:
        probs = torch.softmax(out.classes, 1)[:, 1:].flatten(2).amax(-1).clamp(1e-6, 1 - 1e-6)
        present = F.one_hot(batch.classes.flatten(1), model.vocab.n_classes)[..., 1:].amax(1)
        parts["presence"] = config.presence_weight * F.binary_cross_entropy(probs, present.float())
    attr_loss = out.classes.new_zeros(())
    groups = _element_groups(batch) if out.attention else None
    predicted_w = (
        _predicted_weights(out.classes, groups[1])
        if groups is not None and config.predicted_pooling_weight > 0
        else None
    )
    for attr, logits in out.attributes.items():
        target = batch.attributes[attr]
        if not bool((target != IGNORE).any()):
            continue
        allowed = model.allowed(attr)[batch.classes]  # (B, H, W, V)
        masked = logits + torch.where(allowed, 0.0, NEG).permute(0, 3, 1, 2)
        attr_loss = attr_loss + F.cross_entropy(masked, target, ignore_index=IGNORE)
        if groups is not None:
            log_w, cls, valid = groups
            el_target = (
                torch.where(
                    batch.elements.unsqueeze(1) == torch.arange(log_w.shape[1]).view(1, -1, 1, 1),
                    target.unsqueeze(1),
                    IGNORE,
                )
                .flatten(2)
                .amax(-1)
            )
            el_target = torch.where(valid, el_target, IGNORE)
            if bool((el_target != IGNORE).any()):
                lp = pool_attribute(logits, log_w, model.allowed(attr)[cls], out.attention[attr])
                attr_loss = attr_loss + F.nll_loss(
                    lp.reshape(-1, lp.shape[-1]), el_target.reshape(-1), ignore_index=IGNORE
                )
                if predicted_w is not None:
                    lp = pool_attribute(
                        logits, predicted_w, model.allowed(attr)[cls], out.attention[attr]
                    )
                    attr_loss = attr_loss + config.predicted_pooling_weight * F.nll_loss(
                        lp.reshape(-1, lp.shape[-1]), el_target.reshape(-1), ignore_index=IGNORE
                    )
    # Averaged over the attribute heads, so adding an attribute does not drown the category
    # head (the sum of 14 heads started at 10x the category loss).
    parts["attributes"] = config.attribute_weight * attr_loss / max(1, len(out.attributes))
    street_loss = out.classes.new_zeros(())
    for attr, logits in out.street.items():
        target = batch.street[attr]
        if bool((target != IGNORE).any()):
            street_loss = street_loss + F.cross_entropy(
                logits, target, ignore_index=IGNORE, label_smoothing=ls
            )
    parts["street"] = config.street_weight * street_loss
    return parts


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    validation: dict[str, float]
    """Metrics of the best epoch after calibration."""
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def heads_state(model: EvidenceHeads) -> dict[str, torch.Tensor]:
    """What ships: every parameter and persistent buffer of the heads, as float32."""
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}


def write_run_files(
    run_dir: Path,
    model: EvidenceHeads,
    calibration: Calibration,
    config: EvidenceTrainConfig,
    tower: FrozenTower,
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    """The two shipped files: heads (safetensors) and the JSON the annotator reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    heads = run_dir / ASSET_HEADS
    save_file(heads_state(model), str(heads))
    sha = hashlib.sha256(heads.read_bytes()).hexdigest()
    payload = {
        "format": FORMAT_VERSION,
        "name": "evidence-lite",
        "about": "Learned evidence heads over the frozen dlgpr-lite EfficientNet-Lite0 trunk "
        "(stride 8/16/32 maps at native resolution): per-cell categories, per-cell "
        "attributes pooled per category, street attributes per image; presence "
        "calibrated per category (Platt) and attribute temperatures fitted on the "
        "validation city. Trained by training/train_evidence.py.",
        "tower": {"config": "dlgpr_lite.json", **tower.info.__dict__},
        "heads": config.heads.model_dump(mode="json"),
        "decode": config.decode.model_dump(mode="json"),
        "channels": {str(s): c for s, c in tower.channels().items()},
        "vocab": model.vocab.to_json(),
        "calibration": calibration.to_json(),
        "heads_sha256": sha,
        "training": meta,
    }
    js = run_dir / ASSET_JSON
    js.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return js, heads


@dataclass
class HeadsRun:
    best_epoch: int
    epochs: int
    steps: int
    history: list[dict[str, float]]


def train_heads(
    config: EvidenceTrainConfig,
    model: EvidenceHeads,
    train_data: CityData,
    val_data: CityData,
    weights: torch.Tensor | None,
) -> HeadsRun:
    """The heads' epochs; leaves `model` at the epoch with the best validation score."""
    vocab = model.vocab
    steps_per_epoch = -(-len(train_data) // config.batch_size)
    total = config.max_steps or steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=total, pct_start=0.1
    )
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    rng = np.random.default_rng(config.seed)
    step = 0
    epoch = 0
    while step < total:
        epoch += 1
        model.train()
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        n = 0
        for batch in batches(
            train_data, config.batch_size, rng.permutation(len(train_data)).tolist()
        ):
            out = model(batch.features)
            parts = losses(model, out, batch, config, weights)
            loss = sum(parts.values(), out.classes.new_zeros(()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            step += 1
            if step >= total:
                break
        val = validation_metrics(
            read_city(model, city_outputs(model, val_data), val_data, Calibration()),
            val_data.targets,
            vocab,
        )
        row = {
            "epoch": float(epoch),
            "step": float(step),
            "seconds": time.perf_counter() - t0,
            **{f"loss_{k}": v / max(1, n) for k, v in sums.items()},
            **{f"val_{k}": v for k, v in val.items()},
        }
        history.append(row)
        log.info(
            "epoch %d: loss %.3f, val score %.4f (presence F1 %.3f, attributes %.3f) %.0fs",
            epoch,
            sum(v for k, v in row.items() if k.startswith("loss_")),
            val["score"],
            val["presence_f1"],
            val["attribute_accuracy"],
            row["seconds"],
        )
        if best is None or val["score"] > best[0]:
            best = (val["score"], epoch, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    return HeadsRun(best[1], epoch, step, history)


def train(config: EvidenceTrainConfig, command: str = "") -> TrainResult:
    """Train, select by validation score, calibrate, write the run (and the assets)."""
    start = time.perf_counter()
    _seed(config.seed)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    vocab = LabelVocab.from_slots()
    tower = FrozenTower()
    train_sets = [prepare_city(config, c, vocab, tower) for c in config.train_cities]
    val_sets = [prepare_city(config, c, vocab, tower) for c in config.val_cities]
    train_data = concat(train_sets)
    val_data = concat(val_sets)
    # The training features are read at random: hold them in memory (0.9 GB for 4,000).
    train_data.features = {s: np.ascontiguousarray(f) for s, f in train_data.features.items()}
    model = EvidenceHeads(tower.channels(), vocab, config.heads)
    weights = (
        class_weights(train_data.targets.classes, vocab.n_classes, config.class_balance)
        if config.class_balance > 0
        else None
    )
    run_dir = config.out_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.heads_from is not None:
        # Reuse trained heads (e.g. to retrain only the sign reader): everything but the
        # reader comes from the earlier run's file.
        state = load_file(str(Path(config.heads_from) / ASSET_HEADS))
        model.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("reader.")}, strict=False
        )
        earlier = json.loads((Path(config.heads_from) / ASSET_JSON).read_text(encoding="utf-8"))
        done = earlier.get("training", {})
        heads_command = done.get("heads_command") or done.get("command")
        heads_run = HeadsRun(
            int(done.get("best_epoch", 0)),
            int(done.get("epochs_run", 0)),
            int(done.get("steps", 0)),
            [],
        )
    else:
        heads_command = command
        heads_run = train_heads(config, model, train_data, val_data, weights)
        _write_log(run_dir / "log.csv", heads_run.history)
    model.eval()
    out = city_outputs(model, val_data)
    calibration = fit_calibration(model, out, val_data, vocab)
    heads_only = validation_metrics(
        read_city(model, out, val_data, calibration), val_data.targets, vocab
    )
    reader_metrics: dict[str, float] = {}
    signs = None
    if model.reader is not None:
        t0 = time.perf_counter()
        train_samples = sign_samples(model, city_outputs(model, train_data), train_data, tower)
        val_samples = sign_samples(model, out, val_data, tower)
        reader_metrics = train_reader(model, train_samples, val_samples, config)
        calibration.temperature[READER] = fit_reader_temperature(model, val_samples)
        signs = city_signs(
            model, out, val_data, tower, read_pairs(model, out, calibration, config.decode)
        )
        kinds = city_kinds(model, out, val_data, tower)
        if config.fuse_kinds and kinds is not None:
            calibration.kinds = fit_kinds(
                calibration.presence_probs(raw_presence(out), vocab.categories),
                kinds,
                val_data.targets.present,
                val_data.targets.place_ids,
                vocab.categories,
            )
        reader_metrics["reader_seconds"] = time.perf_counter() - t0
    validation = validation_metrics(
        read_city(model, out, val_data, calibration, signs=signs), val_data.targets, vocab
    )
    validation |= {f"heads_only_{k}": v for k, v in heads_only.items() if k.startswith("acc_name")}
    validation |= reader_metrics
    meta = {
        "train_cities": config.train_cities,
        "val_cities": config.val_cities,
        "images": {"train": len(train_data), "val": len(val_data)},
        "seed": config.seed,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": command,
        "best_epoch": heads_run.best_epoch,
        "epochs_run": heads_run.epochs,
        "steps": heads_run.steps,
        "heads_from": str(config.heads_from) if config.heads_from is not None else None,
        # How the heads were trained, also when they came from an earlier run.
        "heads_command": heads_command,
        "validation": validation,
        "config": config.to_dict(),
    }
    js, heads = write_run_files(run_dir, model, calibration, config, tower, meta)
    if config.write_assets is not None:
        config.write_assets.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(js, config.write_assets / ASSET_JSON)
        shutil.copyfile(heads, config.write_assets / ASSET_HEADS)
    seconds = time.perf_counter() - start
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {"best_epoch": heads_run.best_epoch, "validation": validation, "seconds": seconds},
            indent=2,
        ),
        encoding="utf-8",
    )
    return TrainResult(run_dir, heads_run.best_epoch, validation, heads_run.history, seconds)


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def validation_evidence(
    config: EvidenceTrainConfig, run_dir: Path
) -> dict[str, dict[str, list[ImageEvidence]]]:
    """city -> place id -> the evidence the run's annotator gives each validation image,
    decoded from the cached features (the annotator's decode path, items included)."""
    annotator = LearnedAnnotator.from_dir(run_dir)
    out: dict[str, dict[str, list[ImageEvidence]]] = {}
    for city in config.val_cities:
        data = prepare_city(config, city, annotator.vocab, annotator.tower)
        outputs = city_outputs(annotator.heads, data)
        which = read_pairs(annotator.heads, outputs, annotator.calibration, annotator.decode)
        signs = city_signs(annotator.heads, outputs, data, annotator.tower, which)
        readings = read_city(
            annotator.heads, outputs, data, annotator.calibration, boxes=True, signs=signs
        )
        places: dict[str, list[ImageEvidence]] = {}
        for i, (reading, path, place) in enumerate(
            zip(readings, data.targets.paths, data.targets.place_ids, strict=True)
        ):
            items = reading_items(reading, annotator.vocab, annotator.decode)
            rel = path.relative_to(config.data_root).as_posix()
            places.setdefault(place, []).append(ImageEvidence(i, rel, items))
        out[city] = places
    return out
