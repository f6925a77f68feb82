"""The tower-CMPL training loop: `train(config)` runs (or resumes) one run.

A *step* is one optimizer step on one P x K batch; an *epoch* is one pass of the sampler
over the rank's training places. Everything the towers compute is read from the caches
(built on the first run), so a step costs only the heads and the fine branch. The
distributed, precision, RNG, schedule and metrics helpers are the image trainer's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dlgpr_core.data.annotations import read_annotations

from ...data import PlaceBatchSampler, _annotation_file
from ...features import ImageFeatures, TextFeatures
from ...losses import CMPLLoss
from ...train.checkpoint import CONFIG_DUMP
from ...train.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    reduce_mean,
    shutdown_distributed,
    wrap_ddp,
)
from ...train.metrics_log import MetricsLog
from ...train.precision import choose_precision
from ...train.rng import seed_everything
from ...train.schedule import aux_loss_weight, lr_factor
from ..cache import SegmentStore
from ..extract import TowerExtractor
from ..model import TowerCMPL, export_asset, save_tower_cmpl
from .checkpoint import TowerTrainState, load_checkpoint, resume_dir, save_checkpoint
from .data import CityData, FeatureBatch, load_city, make_batch, tower_dims
from .params import TowerTrainConfig
from .validation import validate

__all__ = ["TowerTrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TowerTrainResult:
    out_dir: Path
    step: int
    best_checkpoint: Path | None
    best_score: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)


class _Forward(nn.Module):
    """The model's training forward as one module call, so DDP sees one forward pass."""

    def __init__(self, model: TowerCMPL) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: FeatureBatch) -> tuple[ImageFeatures, TextFeatures]:
        img = self.model.encode_image(batch.maps, batch.pooled, batch.saliency)
        txt = self.model.encode_text(batch.segments, batch.mask)
        idx = batch.text_index  # one text row per image row: the losses pair row i with i
        return img, TextFeatures(txt.global_[idx], {k: v[idx] for k, v in txt.fine.items()})


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, queries' norms and other 1-D parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def prepare(
    config: TowerTrainConfig, extractor: TowerExtractor, progress: bool
) -> tuple[CityData, CityData, SegmentStore]:
    """Training and validation data, building the caches they lack. The validation city's
    augmented queries use the training city's vocabulary and their own seed."""
    cache = config.cache_directory()
    store = SegmentStore(cache, extractor.text_key())
    train_anns = read_annotations(_annotation_file(config.data_root, config.train_cities[0]))
    kw: dict[str, Any] = {"max_places": config.max_places_per_city, "progress": progress}
    train = load_city(
        extractor,
        config.data_root,
        config.train_cities[0],
        cache,
        store,
        augment=config.augment,
        seed=config.augment_seed,
        **kw,
    )
    val_aug = config.augment.model_copy(update={"variants_per_place": config.val_augment_variants})
    val = load_city(
        extractor,
        config.data_root,
        config.val_cities[0],
        cache,
        store,
        augment=val_aug,
        augment_from=train_anns,
        seed=config.augment_seed + 1,
        **kw,
    )
    return train, val, store


def train(config: TowerTrainConfig, stop_after_steps: int | None = None) -> TowerTrainResult:
    """Run (or resume) training; `stop_after_steps` ends this call early, as a preemption
    would (the schedule still spans the whole run)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    info = init_distributed(config.device)
    try:
        return _train(config, info, stop_after_steps)
    finally:
        shutdown_distributed(info)


def _train(
    config: TowerTrainConfig, info: DistInfo, stop_after_steps: int | None
) -> TowerTrainResult:
    out_dir = Path(config.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    precision = choose_precision(config.precision, info.device)
    seed_everything(config.seed)
    extractor = TowerExtractor(config.model)
    show = config.progress and info.is_main
    train_data, val_data, store = prepare(config, extractor, show)
    model = TowerCMPL(config.model, tower_dims(extractor, train_data, store)).to(info.device)
    model.train()
    forward = wrap_ddp(_Forward(model), info, find_unused_parameters=False)
    loss_fn = CMPLLoss(config.model)
    sampler = PlaceBatchSampler(
        train_data.place_sizes,
        config.P,
        config.K,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    total = config.epochs * sampler.batches_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total, config.min_lr_ratio)
    )
    state = TowerTrainState()
    resume = resume_dir(config)
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer, scheduler)
        log.info("resumed from %s at step %d", resume, state.step)
    result = TowerTrainResult(out_dir, state.step, None, None)
    metrics = MetricsLog(out_dir / "metrics.csv", state.step, None) if info.is_main else None
    val_log = MetricsLog(out_dir / "val.csv", state.step, None) if info.is_main else None
    if info.is_main:
        config.save(out_dir / CONFIG_DUMP)
        log.info(
            "%d training places (%d images, %d texts), %d validation places; %d steps "
            "(%d per epoch), %d parameters",
            len(train_data.places),
            len(train_data.image_place),
            sum(len(t) for t in train_data.texts),
            len(val_data.places),
            total,
            sampler.batches_per_epoch,
            sum(p.numel() for p in model.parameters()),
        )
    stop_at = total if stop_after_steps is None else min(total, stop_after_steps)
    sums: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    validated_at: list[int] = []

    def run_validation() -> None:
        validated_at.append(state.step)
        if info.is_main and val_log is not None:
            t0 = time.perf_counter()
            r = validate(model, val_data, store, config.val_rerank_top)
            row = {"step": state.step, **r, "val_s": time.perf_counter() - t0}
            val_log.write(row)
            result.val_history.append(row)
            log.info(
                "step %d: score %.3f (%s)",
                state.step,
                r["score"],
                ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.endswith("place R@10")),
            )
            if r["score"] > state.best_score:
                state.best_score = r["score"]
                best = out_dir / "best"
                save_tower_cmpl(model, best)
                (best / "metrics.json").write_text(
                    json.dumps({"step": state.step, **r}, indent=2), encoding="utf-8"
                )
        barrier(info)

    while state.step < stop_at:
        sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        for keys in sampler:
            batch = make_batch(train_data, store, keys, model.levels, config.description_prob)
            batch = batch.to(info.device)
            aux = aux_loss_weight(state.step, config.gs_only_warmup_steps, config.aux_ramp_steps)
            with precision.autocast():
                img, txt = forward(batch)
            loss, terms = loss_fn(img, txt, batch.labels, aux_weight=aux)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            lr = float(scheduler.get_last_lr()[0])
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += 1
            window_steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if state.step % config.log_every == 0 or state.step == stop_at:
                avg = reduce_mean({k: v / window_steps for k, v in sums.items()}, info, info.device)
                now = time.perf_counter()
                row: dict[str, float] = {"step": state.step, "epoch": state.epoch, "lr": lr}
                row |= {f"loss/{k}": v for k, v in sorted(avg.items())}
                row["steps_per_s"] = window_steps / max(now - window_start, 1e-9)
                if metrics is not None:
                    metrics.write(row)
                    result.history.append(row)
                    if config.progress:
                        log.info(
                            "step %d/%d loss %.4f (%.2f steps/s)",
                            state.step,
                            total,
                            avg.get("total", float("nan")),
                            row["steps_per_s"],
                        )
                sums, window_start, window_steps = {}, now, 0
            end_of_epoch = state.batch_in_epoch >= sampler.batches_per_epoch
            val_due = (
                end_of_epoch if config.val_every is None else state.step % config.val_every == 0
            )
            if val_due:
                run_validation()
            if end_of_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
            if end_of_epoch or state.step >= stop_at:
                if info.is_main:
                    save_checkpoint(out_dir / "last", model, config, state, optimizer, scheduler)
                barrier(info)
            if end_of_epoch or state.step >= stop_at:
                break
    if state.step >= total and state.step not in validated_at:
        run_validation()
    for log_file in (metrics, val_log):
        if log_file is not None:
            log_file.close()
    result.step = state.step
    if (out_dir / "best" / "model.safetensors").exists():
        result.best_checkpoint = out_dir / "best"
        result.best_score = state.best_score
        if config.write_asset is not None and info.is_main:
            export_asset(result.best_checkpoint, config.write_asset)
            log.info("wrote the asset %s from %s", config.write_asset, result.best_checkpoint)
    return result
