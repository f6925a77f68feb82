"""Resumable checkpoints: the loop position (`TrainState`) and every piece of state beside
the weights, so a resumed run continues the same loss curve.

Layout of a checkpoint directory (unchanged since `STATE_FORMAT` 1, so older runs resume):
the model as `save_cmpl` writes it (safetensors + config JSON), `train_state.pt` (plain
tensors and numbers: never unpickles objects) and `train_config.yaml`, plus the `COMPLETE`
marker of `dlgpr_core.atomic`.

Crash safety: `last` and `best` are built beside themselves and swapped in
(`dlgpr_core.atomic.replace_dir`), so a crash leaves a loadable copy, and `find_resume_dir`
puts it back under its name and says so. A checkpoint that exists but cannot be loaded is
refused (`CheckpointError`), never silently replaced by a fresh start from step 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dlgpr_core.atomic import recover_dir, replace_dir, staged

from ..factory import WEIGHTS_FILE, save_cmpl
from ..model import CMPL
from .params import TrainConfig
from .rng import rng_state, set_rng_state

__all__ = [
    "CONFIG_DUMP",
    "STATE_FILE",
    "STATE_FORMAT",
    "CheckpointError",
    "TrainState",
    "config_drift",
    "find_resume_dir",
    "load_checkpoint",
    "recover_checkpoints",
    "save_best",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be resumed from; the message says what to do."""


STATE_FILE = "train_state.pt"
CONFIG_DUMP = "train_config.yaml"
STATE_FORMAT = "dlgpr-cmpl-train/1"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_r1: float = -1.0


def save_checkpoint(
    directory: Path,
    model: CMPL,
    config: TrainConfig,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
) -> Path:
    """Model via save_cmpl (safetensors + config JSON); everything else as plain tensors and
    numbers in train_state.pt. Written next to the target and swapped in
    (`dlgpr_core.atomic.replace_dir`), so a crash while saving leaves a loadable copy."""
    _recover(directory)  # a previous crash's survivor must not be overwritten as "tmp"
    tmp = staged(directory)
    save_cmpl(model, tmp)
    torch.save(
        {
            "format": STATE_FORMAT,
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "best_r1": state.best_r1,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        },
        tmp / STATE_FILE,
    )
    config.save(tmp / CONFIG_DUMP)
    return replace_dir(tmp, directory)


def save_best(directory: Path, model: CMPL, metrics: dict[str, Any]) -> Path:
    """The best model so far and its validation metrics, swapped in whole like `last`
    (written in place, a crash would leave a torn best behind the previous one's name)."""
    _recover(directory)
    tmp = staged(directory)
    save_cmpl(model, tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return replace_dir(tmp, directory)


def _recover(directory: Path) -> None:
    note = recover_dir(directory)
    if note is not None:
        log.warning("%s", note)


def recover_checkpoints(out_dir: Path) -> None:
    """Restore `last` and `best` under `out_dir` after a crash while they were replaced
    (logged); called before a run looks for its checkpoint."""
    for name in ("last", "best"):
        _recover(Path(out_dir) / name)


def load_checkpoint(
    directory: Path,
    model: CMPL,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Restore weights, optimizer, schedule, scaler and RNG; never unpickles objects.
    Raises `CheckpointError` naming the directory when any part of it cannot be loaded."""
    try:
        raw = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise ValueError(f"{directory / STATE_FILE} is not a {STATE_FORMAT} file")
        load_model(model, str(directory / WEIGHTS_FILE), strict=True, device=str(_device_of(model)))
        optimizer.load_state_dict(raw["optimizer"])
        scheduler.load_state_dict(raw["scheduler"])
        if raw["scaler"]:
            scaler.load_state_dict(raw["scaler"])
        set_rng_state(raw["rng"])
        return TrainState(raw["step"], raw["epoch"], raw["batch_in_epoch"], raw["best_r1"])
    except Exception as exc:  # torch, safetensors and the state dicts each raise their own
        raise CheckpointError(
            f"checkpoint {directory} cannot be loaded ({type(exc).__name__}: "
            f"{str(exc)[:300]}); refusing to start again from step 0 over it: delete it to "
            "start afresh, or set resume to another checkpoint"
        ) from exc


def find_resume_dir(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from: an explicit `resume: <dir>`, else `<out_dir>/last`
    when `resume` is true (restored first if a crash left it under ``last.tmp`` or
    ``last.old``), else none (a fresh start). A `last` without a train state is refused
    (`CheckpointError`) rather than trained over from step 0."""
    if isinstance(config.resume, Path):
        if not (config.resume / STATE_FILE).is_file():
            raise CheckpointError(
                f"resume: {config.resume} holds no {STATE_FILE}; name a checkpoint directory "
                "(e.g. <out_dir>/last)"
            )
        return config.resume
    if not config.resume:
        return None
    last = Path(config.out_dir) / "last"
    _recover(last)
    if not last.exists():
        return None
    if not (last / STATE_FILE).is_file():
        raise CheckpointError(
            f"{last} exists but holds no {STATE_FILE}, so it cannot be resumed from; refusing "
            "to start again from step 0 over it: delete it to start afresh, or set resume=false"
        )
    return last


def config_drift(directory: Path, config: TrainConfig) -> list[str]:
    """Top-level keys whose value differs from the config saved in `directory`."""
    path = directory / CONFIG_DUMP
    if not path.exists():
        return []
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = config.to_dict()
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
