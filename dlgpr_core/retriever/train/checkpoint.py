"""Resumable checkpoints: the loop position (`TrainState`) and every piece of state beside
the weights, so a resumed run continues the same loss curve.

Layout of a checkpoint directory (unchanged since `STATE_FORMAT` 1, so older runs resume):
the model as `save_cmpl` writes it (safetensors + config JSON), `train_state.pt` (plain
tensors and numbers: never unpickles objects) and `train_config.yaml`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_model
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..factory import WEIGHTS_FILE, save_cmpl
from ..model import CMPL
from .params import TrainConfig
from .rng import rng_state, set_rng_state

__all__ = [
    "CONFIG_DUMP",
    "STATE_FILE",
    "STATE_FORMAT",
    "TrainState",
    "config_drift",
    "find_resume_dir",
    "load_checkpoint",
    "save_checkpoint",
]

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
    numbers in train_state.pt. Written next to the target and swapped in, so a crash while
    saving leaves the previous checkpoint intact."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
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
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def load_checkpoint(
    directory: Path,
    model: CMPL,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Restore weights, optimizer, schedule, scaler and RNG; never unpickles objects."""
    raw = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    if raw.get("format") != STATE_FORMAT:
        raise ValueError(f"{directory / STATE_FILE} is not a {STATE_FORMAT} file")
    load_model(model, str(directory / WEIGHTS_FILE), strict=True, device=str(_device_of(model)))
    optimizer.load_state_dict(raw["optimizer"])
    scheduler.load_state_dict(raw["scheduler"])
    if raw["scaler"]:
        scaler.load_state_dict(raw["scaler"])
    set_rng_state(raw["rng"])
    return TrainState(raw["step"], raw["epoch"], raw["batch_in_epoch"], raw["best_r1"])


def find_resume_dir(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from: an explicit `resume: <dir>`, else `<out_dir>/last`
    when `resume` is true and it holds a train state, else none (a fresh start)."""
    if isinstance(config.resume, Path):
        return config.resume
    last = Path(config.out_dir) / "last"
    if config.resume and (last / STATE_FILE).exists():
        return last
    return None


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
