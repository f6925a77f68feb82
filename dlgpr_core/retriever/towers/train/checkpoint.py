"""Resumable checkpoints of a tower-CMPL run, laid out as the image trainer's.

A checkpoint directory holds the model as `save_tower_cmpl` writes it (safetensors + config
JSON: the trained parameters only), ``train_state.pt`` (plain tensors and numbers, loaded
with weights_only) and ``train_config.yaml``. It is written beside its target and swapped
in, so a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model
from torch.optim.lr_scheduler import LambdaLR

from ...train.checkpoint import CONFIG_DUMP, STATE_FILE
from ...train.rng import rng_state, set_rng_state
from ..model import WEIGHTS_FILE, TowerCMPL, save_tower_cmpl
from .params import TowerTrainConfig

STATE_FORMAT = "dlgpr-cmpl-towers-train/1"


@dataclass
class TowerTrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = -1.0


def save_checkpoint(
    directory: Path,
    model: TowerCMPL,
    config: TowerTrainConfig,
    state: TowerTrainState,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
) -> Path:
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_tower_cmpl(model, tmp)
    torch.save(
        {
            "format": STATE_FORMAT,
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "best_score": state.best_score,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
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
    directory: Path, model: TowerCMPL, optimizer: torch.optim.Optimizer, scheduler: LambdaLR
) -> TowerTrainState:
    raw = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    if raw.get("format") != STATE_FORMAT:
        raise ValueError(f"{directory / STATE_FILE} is not a {STATE_FORMAT} file")
    load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    optimizer.load_state_dict(raw["optimizer"])
    scheduler.load_state_dict(raw["scheduler"])
    set_rng_state(raw["rng"])
    return TowerTrainState(raw["step"], raw["epoch"], raw["batch_in_epoch"], raw["best_score"])


def resume_dir(config: TowerTrainConfig) -> Path | None:
    last = Path(config.out_dir) / "last"
    return last if config.resume and (last / STATE_FILE).exists() else None
