"""The CMPL training loop: `train(config)` runs (or resumes) one run.

Definitions: a *step* is one optimizer step (= `grad_accum` micro-batches of P x K images);
an *epoch* is one pass over the rank's shard of training places. Training stops at `epochs`
or `max_steps`, whichever comes first, and the LR schedule spans exactly that many steps.

The loop is plain PyTorch, cut into one function per stage (set-up, a micro-batch, an
optimizer step, logging, validation, checkpoint) that share one `_Run`. The order of every
random draw is part of the resume guarantee (a resumed run repeats the uninterrupted loss
curve), so a change here must keep the order of model creation, data set-up and batches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from dlgpr_core.config import ConfigError

from ..data import (
    PlaceBatch,
    PlaceBatchSampler,
    PlaceCollator,
    PlaceTextDataset,
    split_places,
    train_transform,
)
from ..evaluation import place_recall
from ..factory import WEIGHTS_FILE, create_cmpl, image_preprocess
from ..features import ImageFeatures, TextFeatures
from ..losses import CMPLLoss
from ..model import CMPL
from .checkpoint import (
    CONFIG_DUMP,
    STATE_FILE,
    TrainState,
    config_drift,
    find_resume_dir,
    load_checkpoint,
    recover_checkpoints,
    save_best,
    save_checkpoint,
)
from .distributed import (
    DistInfo,
    barrier,
    init_distributed,
    no_sync,
    reduce_mean,
    shutdown_distributed,
    wrap_ddp,
)
from .metrics_log import MetricsLog
from .params import TrainConfig
from .precision import Precision, choose_precision
from .rng import seed_everything
from .schedule import aux_loss_weight, lr_factor, param_groups

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    epoch: int
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_r1: float | None
    history: list[dict[str, float]] = field(default_factory=list)  # logged rows of this call
    val_history: list[dict[str, float]] = field(default_factory=list)


# -- what one call holds ----------------------------------------------------------------------


@dataclass
class _Data:
    n_train_places: int
    n_val_places: int
    train_ds: PlaceTextDataset
    val_ds: PlaceTextDataset | None
    sampler: PlaceBatchSampler
    collate: PlaceCollator
    steps_per_epoch: int
    batches_per_epoch: int  # micro-batches per epoch that make whole steps
    total_steps: int  # the length of the schedule (the whole run, not this call)


@dataclass
class _Optim:
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler


@dataclass
class _LogWindow:
    """Loss terms summed since the last logged step, and when that was."""

    sums: dict[str, float] = field(default_factory=dict)
    since: float = field(default_factory=time.perf_counter)
    steps: int = 0

    def reset(self, now: float) -> None:
        self.sums = {}
        self.since = now
        self.steps = 0


@dataclass
class _Run:
    config: TrainConfig
    info: DistInfo
    model: CMPL
    ddp: nn.Module  # what the forward goes through: `model` or its DDP wrapper
    loss_fn: CMPLLoss
    data: _Data
    optim: _Optim
    precision: Precision
    state: TrainState
    result: TrainResult
    metrics: MetricsLog | None  # main rank only
    val_metrics: MetricsLog | None
    stop_at: int
    bar: tqdm[Any]
    window: _LogWindow = field(default_factory=_LogWindow)
    validated_at: list[int] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def last_dir(self) -> Path:
        return self.result.out_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.result.out_dir / "best"


# -- entry point ------------------------------------------------------------------------------


def train(config: TrainConfig, stop_after_steps: int | None = None) -> TrainResult:
    """Run (or resume) training. `stop_after_steps` ends this call early after that many
    steps of the schedule, as a preemption would (the schedule still spans the full run);
    the next call resumes from the checkpoint it leaves."""
    info = init_distributed(config.device)
    try:
        run = _start(config, info, stop_after_steps)
        while run.state.step < run.stop_at and run.state.epoch < config.epochs:
            _run_epoch(run)
        run.bar.close()
        return _finish(run)
    finally:
        shutdown_distributed(info)


# -- set-up -----------------------------------------------------------------------------------


def _start(config: TrainConfig, info: DistInfo, stop_after_steps: int | None) -> _Run:
    """Everything before the first batch, in the order the resume guarantee relies on."""
    out_dir = Path(config.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    precision = choose_precision(config.precision, info.device)
    seed_everything(config.seed)
    model = _build_model(config, info.device)
    loss_fn = CMPLLoss(config.model)
    data = _build_data(config, model, info)
    optim = _build_optim(config, model, data.total_steps, precision)
    state = _resume(config, info, model, optim)
    ddp = wrap_ddp(model, info, config.find_unused_parameters)
    metrics, val_metrics = _open_logs(config, info, state, data, precision)
    bar = tqdm(
        total=data.total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (info.is_main and config.progress),
        dynamic_ncols=True,
    )
    stop_at = data.total_steps
    if stop_after_steps is not None:
        stop_at = min(stop_at, stop_after_steps)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    result = TrainResult(out_dir, state.step, state.epoch, None, None, None)
    return _Run(
        config, info, model, ddp, loss_fn, data, optim, precision, state, result,
        metrics, val_metrics, stop_at, bar,
    )  # fmt: skip


def _build_model(config: TrainConfig, device: torch.device) -> CMPL:
    model = create_cmpl(config.model, allow_random=config.allow_random)
    # CMPL scores with its own temperatures; CLIP's logit scale/bias get no gradient, and a
    # parameter without gradient would stall DDP's reducer.
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model.clip, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(False)
    if config.grad_checkpointing:
        clip: Any = model.clip
        clip.set_grad_checkpointing(True)
    model.to(device).train()
    return model


def _build_data(config: TrainConfig, model: CMPL, info: DistInfo) -> _Data:
    """Places split into train/val, this rank's P x K sampler and the schedule length."""
    train_places, val_places = split_places(
        config.data_root,
        config.train_cities,
        config.val_cities,
        config.val_fraction,
        config.seed,
        config.max_places_per_city,
    )
    visual: Any = model.clip.visual
    train_ds = PlaceTextDataset(
        train_places,
        train_transform(visual.image_size, config.augment),
        use_caption=config.caption_prob > 0,
    )
    val_ds = PlaceTextDataset(val_places, image_preprocess(model)) if val_places else None
    sampler = PlaceBatchSampler(
        [len(p.images) for p in train_places],
        config.P,
        config.K,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
        n_text_views=train_ds.n_text_views,
        caption_prob=config.caption_prob,
    )
    steps_per_epoch = sampler.batches_per_epoch // config.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"an epoch has {sampler.batches_per_epoch} batches per rank, fewer than "
            f"grad_accum={config.grad_accum}"
        )
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return _Data(
        n_train_places=len(train_places),
        n_val_places=len(val_places),
        train_ds=train_ds,
        val_ds=val_ds,
        sampler=sampler,
        collate=PlaceCollator(train_ds.texts, model.tokenizer),
        steps_per_epoch=steps_per_epoch,
        batches_per_epoch=steps_per_epoch * config.grad_accum,
        total_steps=total_steps,
    )


def _build_optim(
    config: TrainConfig, model: CMPL, total_steps: int, precision: Precision
) -> _Optim:
    optimizer = torch.optim.AdamW(
        param_groups(model, config.lr, config.weight_decay, config.head_lr_mult),
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = LambdaLR(
        optimizer,
        lambda s: lr_factor(s, config.warmup_steps, total_steps, config.min_lr_ratio),
    )
    return _Optim(optimizer, scheduler, precision.grad_scaler())


def _resume(config: TrainConfig, info: DistInfo, model: CMPL, optim: _Optim) -> TrainState:
    """The loop position to start from, restoring a checkpoint when there is one."""
    if info.is_main:
        recover_checkpoints(Path(config.out_dir))
    barrier(info)
    resume_dir = find_resume_dir(config)
    if resume_dir is None:
        return TrainState()
    drift = config_drift(resume_dir, config)
    if drift and info.is_main:
        log.warning("resuming with a config that differs in %s", drift)
    state = load_checkpoint(resume_dir, model, optim.optimizer, optim.scheduler, optim.scaler)
    if info.is_main:
        log.info("resumed from %s at step %d (epoch %d)", resume_dir, state.step, state.epoch)
    return state


def _open_logs(
    config: TrainConfig, info: DistInfo, state: TrainState, data: _Data, precision: Precision
) -> tuple[MetricsLog | None, MetricsLog | None]:
    """The main rank's metrics/val logs (trimmed to the resumed step) and config dump."""
    if not info.is_main:
        return None, None
    out_dir = Path(config.out_dir)
    tb_dir = out_dir / "tensorboard" if config.log == "tensorboard" else None
    metrics = MetricsLog(out_dir / "metrics.csv", state.step, tb_dir)
    val_metrics = MetricsLog(out_dir / "val.csv", state.step, None)
    config.save(out_dir / CONFIG_DUMP)
    log.info(
        "training %d places (%d images), validating %d places; %d steps/epoch, %d steps, "
        "world size %d, device %s, precision %s",
        data.n_train_places,
        len(data.train_ds),
        data.n_val_places,
        data.steps_per_epoch,
        data.total_steps,
        info.world_size,
        info.device,
        precision.name,
    )
    return metrics, val_metrics


# -- one epoch, one step ----------------------------------------------------------------------


def _run_epoch(run: _Run) -> None:
    """The rest of the current epoch (from `state.batch_in_epoch`), or until `stop_at`."""
    state, config = run.state, run.config
    run.data.sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    loader = DataLoader(
        run.data.train_ds,
        batch_sampler=run.data.sampler,
        collate_fn=run.data.collate,
        num_workers=config.num_workers,
        pin_memory=run.device.type == "cuda",
    )
    epoch_before = (state.epoch, state.batch_in_epoch)
    for micro, batch in enumerate(loader, start=1):
        assert isinstance(batch, PlaceBatch)
        if state.batch_in_epoch >= run.data.batches_per_epoch:
            break
        batch = batch.to(run.device, non_blocking=True)
        last_micro = micro % config.grad_accum == 0
        aux = _micro_step(run, batch, sync=last_micro)
        if last_micro and _end_step(run, aux, len(batch)):
            break
    if (state.epoch, state.batch_in_epoch) == epoch_before:
        raise RuntimeError(f"epoch {state.epoch} yielded no batch (sampler/config mismatch)")


def _micro_step(run: _Run, batch: PlaceBatch, sync: bool) -> float:
    """Forward and backward of one micro-batch (gradients all-reduced only when `sync`);
    returns the auxiliary-loss weight it used."""
    config, state = run.config, run.state
    with no_sync(run.ddp, skip_sync=not sync):
        with run.precision.autocast():
            img, txt = run.ddp(batch.images, batch.text)
        img32, txt32 = _float_features(img, txt, batch.text_index)
        aux = aux_loss_weight(state.step, config.gs_only_warmup_steps, config.aux_ramp_steps)
        loss, terms = run.loss_fn(img32, txt32, batch.labels, aux_weight=aux)
        run.optim.scaler.scale(loss / config.grad_accum).backward()
    sums = run.window.sums
    for k, v in terms.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach()) / config.grad_accum
    state.batch_in_epoch += 1
    return aux


def _end_step(run: _Run, aux: float, batch_size: int) -> bool:
    """Optimizer step, then what is due after it (log, validation, checkpoint); True when
    the epoch or this call ends."""
    config, state = run.config, run.state
    lr = _optimizer_step(run)
    state.step += 1
    run.window.steps += 1
    run.bar.update()
    end_of_epoch = state.batch_in_epoch >= run.data.batches_per_epoch
    if state.step % config.log_every == 0 or state.step == run.stop_at:
        _log_step(run, lr, aux, batch_size)
    val_due = end_of_epoch if config.val_every is None else state.step % config.val_every == 0
    if val_due:
        _validate(run)
    if end_of_epoch:
        # Store the position as "start of next epoch" so a resume never replays the
        # epoch-end validation or an empty tail of this epoch.
        state.epoch += 1
        state.batch_in_epoch = 0
    periodic = config.checkpoint_every is not None and state.step % config.checkpoint_every == 0
    if periodic or end_of_epoch or state.step >= run.stop_at:
        _checkpoint(run)
    return end_of_epoch or state.step >= run.stop_at


def _optimizer_step(run: _Run) -> float:
    """Clip, step, advance the schedule; returns the LR the step used."""
    optim, clip = run.optim, run.config.grad_clip
    if clip is not None:
        optim.scaler.unscale_(optim.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    optim.scaler.step(optim.optimizer)
    optim.scaler.update()
    optim.optimizer.zero_grad(set_to_none=True)
    lr = float(optim.scheduler.get_last_lr()[0])
    optim.scheduler.step()
    return lr


def _float_features(
    img: ImageFeatures, txt: TextFeatures, text_index: Tensor
) -> tuple[ImageFeatures, TextFeatures]:
    """fp32 features, texts expanded to one row per image (the losses pair row i with i)."""
    img32 = ImageFeatures(img.global_.float(), {k: v.float() for k, v in img.fine.items()})
    txt32 = TextFeatures(
        txt.global_.float()[text_index], {k: v.float()[text_index] for k, v in txt.fine.items()}
    )
    return img32, txt32


# -- logging, validation, checkpoints ---------------------------------------------------------


def _log_step(run: _Run, lr: float, aux: float, batch_size: int) -> None:
    """One metrics row: loss terms averaged over the window and the ranks, plus throughput."""
    config, state, info = run.config, run.state, run.info
    avg = reduce_mean(run.window.sums, info, run.device)
    now = time.perf_counter()
    row: dict[str, float] = {"step": state.step, "epoch": state.epoch, "lr": lr}
    row |= {f"loss/{k}": v for k, v in sorted(avg.items())}
    if config.gs_only_warmup_steps or config.aux_ramp_steps:
        row["aux_weight"] = aux
    row["steps_per_s"] = run.window.steps / max(now - run.window.since, 1e-9)
    row["samples_per_s"] = row["steps_per_s"] * config.grad_accum * batch_size * info.world_size
    if run.device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    if run.metrics is not None:
        run.metrics.write(row)
        run.result.history.append(row)
        run.bar.set_postfix(loss=f"{avg.get('total', float('nan')):.4f}", lr=f"{lr:.2e}")
    run.window.reset(now)


def _validate(run: _Run) -> None:
    """Validation R@K on the main rank; a new best R@1 is saved to `best/`."""
    state = run.state
    run.validated_at.append(state.step)
    if run.val_metrics is not None and run.data.val_ds is not None:
        t0 = time.perf_counter()
        r = place_recall(
            run.model,
            run.data.val_ds,
            rerank_top=run.config.val_rerank_top,
            batch_size=run.config.val_batch_size,
            device=run.device,
            autocast=run.precision.autocast(),
        )
        row: dict[str, float] = {"step": state.step, "epoch": state.epoch, **r}
        row["val_s"] = time.perf_counter() - t0
        run.val_metrics.write(row)
        run.result.val_history.append(row)
        log.info("step %d: %s", state.step, " ".join(f"{k}={v:.3f}" for k, v in r.items()))
        if r["R@1"] > state.best_r1:
            state.best_r1 = r["R@1"]
            save_best(run.best_dir, run.model, {"step": state.step, "epoch": state.epoch, **r})
    barrier(run.info)


def _checkpoint(run: _Run) -> None:
    if run.info.is_main:
        o = run.optim
        save_checkpoint(
            run.last_dir, run.model, run.config, run.state, o.optimizer, o.scheduler, o.scaler
        )
        run.result.last_checkpoint = run.last_dir
    barrier(run.info)


def _finish(run: _Run) -> TrainResult:
    """A final validation when the run ended after the last scheduled one; close the logs."""
    state, result = run.state, run.result
    finished = state.step >= run.data.total_steps or state.epoch >= run.config.epochs
    if finished and run.data.val_ds is not None and state.step not in run.validated_at:
        _validate(run)  # e.g. max_steps ended mid-epoch, after the last scheduled validation
    for metrics in (run.metrics, run.val_metrics):
        if metrics is not None:
            metrics.close()
    result.step = state.step
    result.epoch = state.epoch
    if (run.last_dir / STATE_FILE).exists():
        result.last_checkpoint = run.last_dir
    if (run.best_dir / WEIGHTS_FILE).exists():
        result.best_checkpoint = run.best_dir
        result.best_r1 = state.best_r1
    return result
