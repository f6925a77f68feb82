"""CMPL training loop: one config object, seeded, DDP-ready, resumable to the same loss curve.

Style follows the VPR codebases (GSV-Cities/MixVPR/BoQ): a single `TrainConfig` describes a
run completely (it is written beside every checkpoint), data (`data.py`) is apart from the
model, and the loop is plain PyTorch. Multi-GPU runs use torchrun + DistributedDataParallel
directly (no accelerate): the loop needs exact control of accumulation, RNG and resume, and
plain DDP keeps that visible.

Definitions: a *step* is one optimizer step (= `grad_accum` micro-batches of P x K images);
an *epoch* is one pass over the rank's shard of training places. Training stops at `epochs`
or `max_steps`, whichever comes first, and the LR schedule spans exactly that many steps.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.torch import load_model
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import ABLATION_PRESETS, CMPLConfig, ablation_preset
from .data import (
    AugmentConfig,
    PlaceBatch,
    PlaceBatchSampler,
    PlaceCollator,
    PlaceTextDataset,
    split_places,
    train_transform,
)
from .evaluation import place_recall
from .factory import WEIGHTS_FILE, create_cmpl, image_preprocess, save_cmpl
from .losses import CMPLLoss
from .model import CMPL, ImageFeatures, TextFeatures

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
CONFIG_DUMP = "train_config.yaml"
STATE_FORMAT = "dlgpr-cmpl-train/1"


class ConfigError(ValueError):
    """A training config that cannot be used, with the offending key named."""


# -- config -----------------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """Everything a run depends on. Unknown keys are errors, so a typo never falls back to a
    default silently."""

    model_config = ConfigDict(extra="forbid")

    # data
    data_root: Path
    train_cities: list[str] = Field(min_length=1)
    val_cities: list[str] = Field(default_factory=list)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_places_per_city: int | None = Field(default=None, ge=1)
    caption_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = Field(default=0, ge=0)

    # model: an inline CMPLConfig or the path of its YAML/JSON file
    model: CMPLConfig = Field(default_factory=CMPLConfig)
    ablation: str | None = None
    allow_random: bool = False
    grad_checkpointing: bool = False

    # batch / optimisation
    P: int = Field(default=16, ge=2)
    K: int = Field(default=4, ge=1)
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    head_lr_mult: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    grad_accum: int = Field(default=1, ge=1)
    # From-scratch warm-up: the first `gs_only_warmup_steps` steps train on L_gs alone (fine
    # and VPR terms weighted 0), then their weight ramps linearly to 1 over `aux_ramp_steps`.
    # On a random model the fine terms (local SDM even without HI) otherwise flatten every
    # similarity within ~40 steps and drag the global embedding into the same collapse.
    gs_only_warmup_steps: int = Field(default=0, ge=0)
    aux_ramp_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    device: str | None = None  # None: cuda when available
    find_unused_parameters: bool = False

    # bookkeeping
    out_dir: Path = Path("runs/cmpl")
    log: Literal["csv", "tensorboard"] = "csv"
    log_every: int = Field(default=1, ge=1)
    progress: bool = True
    checkpoint_every: int | None = Field(default=None, ge=1)
    resume: bool | Path = True  # True: continue from out_dir/last when it exists
    val_every: int | None = Field(default=None, ge=1)  # None: after every epoch
    val_rerank_top: int | None = Field(default=100, ge=0)
    val_batch_size: int = Field(default=32, ge=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return CMPLConfig.load(value)
        return value

    @model_validator(mode="after")
    def _apply_ablation(self) -> TrainConfig:
        # Idempotent (a preset is a patch of switches), so re-validating a dumped config that
        # already carries the patched model gives the same model.
        if self.ablation is not None:
            if self.ablation not in ABLATION_PRESETS:
                raise ValueError(
                    f"unknown ablation {self.ablation!r}; known: {sorted(ABLATION_PRESETS)}"
                )
            self.model = ablation_preset(self.ablation, self.model)
        return self

    # -- YAML ---------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Load a YAML config, then apply dotted ``key=value`` overrides (values parsed as
        YAML: ``lr=3e-4``, ``train_cities=[A,B]``, ``model.use_hi=false``).

        ``base: other.yaml`` merges this file over another (relative to this file), and a
        ``model: file.yaml`` path is read relative to the config that names it.
        """
        data = _read_yaml_tree(Path(path))
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not key=value")
            _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_explain(err, source)) from err

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config base chain loops: {[str(p) for p in (*seen, path)]}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    model = data.get("model")
    if isinstance(model, str):
        data["model"] = CMPLConfig.load(path.parent / model).to_dict()
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml_tree(path.parent / str(base), (*seen, path))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and i == 0 and part == "model":
            child = node[part] = CMPLConfig.load(child).to_dict()
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def _explain(err: ValidationError, source: str) -> str:
    """Name each bad key, with a close known key for typos."""
    lines = [f"invalid training config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _known_keys(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  unknown key {loc!r}{hint}")
        else:
            lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def _known_keys(parent: Sequence[int | str]) -> list[str]:
    model: Any = TrainConfig
    for part in parent:
        ann = getattr(model, "model_fields", {}).get(str(part))
        if ann is None:
            return []
        model = ann.annotation
    return list(getattr(model, "model_fields", {}))


# -- distributed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on cuda, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if want_cuda:
        dev = torch.device("cuda", local_rank) if world > 1 else torch.device(device or "cuda")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank, local_rank, world, dev, owns)


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


# -- RNG / seeding ----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """All global RNG states as plain tensors/ints (loadable with weights_only=True)."""
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- optimisation -----------------------------------------------------------------------------


def param_groups(
    model: CMPL, lr: float, weight_decay: float, head_lr_mult: float
) -> list[dict[str, Any]]:
    """open_clip's rule: no decay on gains, biases and 1-D params; the randomly initialised
    fine branch may take a larger LR than the (usually pretrained) backbone."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "bias" in name or ".ln" in name or name.startswith("ln")
        head = not name.startswith("clip.")
        groups.setdefault((no_decay, head), []).append(p)
    out = []
    for (no_decay, head), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lr * (head_lr_mult if head else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return out


def aux_loss_weight(step: int, gs_only_steps: int, ramp_steps: int) -> float:
    """Weight of the fine and VPR terms at optimizer step `step` (0-based): 0 during the
    global-only warm-up, then a linear ramp reaching 1 after `ramp_steps` more steps."""
    if step < gs_only_steps:
        return 0.0
    if ramp_steps == 0:
        return 1.0
    return min(1.0, (step - gs_only_steps + 1) / ramp_steps)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio at `total` (step counts done steps)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- logging ----------------------------------------------------------------------------------


class MetricsLog:
    """Append-only CSV (columns fixed by the first row), optionally mirrored to TensorBoard.

    On resume, rows past the resumed step are dropped: they come from steps the run is about
    to redo, so the file ends up identical to an uninterrupted run's.
    """

    def __init__(self, path: Path, resume_step: int, tensorboard_dir: Path | None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.fields)
                writer.writeheader()
                writer.writerows(rows)
        self.tb: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("log=tensorboard but tensorboard is not installed; CSV only")
            else:
                self.tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)

    def write(self, row: dict[str, float | int]) -> None:
        new = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:
            log.warning("%s: dropping columns %s not in the header", self.path.name, extra)
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- checkpoints ------------------------------------------------------------------------------


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
            "rng": _rng_state(),
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
    _set_rng_state(raw["rng"])
    return TrainState(raw["step"], raw["epoch"], raw["batch_in_epoch"], raw["best_r1"])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _config_drift(directory: Path, config: TrainConfig) -> list[str]:
    path = directory / CONFIG_DUMP
    if not path.exists():
        return []
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    new = config.to_dict()
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# -- the loop ---------------------------------------------------------------------------------


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


def _precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    if config.precision == "fp32":
        return None, False
    if device.type != "cuda":
        log.info("precision=%s requested on %s: running fp32", config.precision, device.type)
        return None, False
    if config.precision == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def _float_features(
    img: ImageFeatures, txt: TextFeatures, text_index: Tensor
) -> tuple[ImageFeatures, TextFeatures]:
    """fp32 features, texts expanded to one row per image (the losses pair row i with i)."""
    img32 = ImageFeatures(img.global_.float(), {k: v.float() for k, v in img.fine.items()})
    txt32 = TextFeatures(
        txt.global_.float()[text_index], {k: v.float()[text_index] for k, v in txt.fine.items()}
    )
    return img32, txt32


def _reduce_mean(
    values: dict[str, float], info: DistInfo, device: torch.device
) -> dict[str, float]:
    if not info.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


@contextmanager
def _maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    if skip_sync and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def train(config: TrainConfig, stop_after_steps: int | None = None) -> TrainResult:
    """Run (or resume) training. `stop_after_steps` ends this call early after that many
    steps of the schedule, as a preemption would (the schedule still spans the full run);
    the next call resumes from the checkpoint it leaves."""
    info = init_distributed(config.device)
    try:
        return _train(config, info, stop_after_steps)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, info: DistInfo, stop_after_steps: int | None) -> TrainResult:
    device = info.device
    out_dir = Path(config.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype, use_scaler = _precision(config, device)

    seed_everything(config.seed)
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
    loss_fn = CMPLLoss(config.model)

    # data
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
    collate = PlaceCollator(train_ds.texts, model.tokenizer)
    steps_per_epoch = sampler.batches_per_epoch // config.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"an epoch has {sampler.batches_per_epoch} batches per rank, fewer than "
            f"grad_accum={config.grad_accum}"
        )
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    batches_per_epoch = steps_per_epoch * config.grad_accum

    # optimisation
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
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    # resume
    state = TrainState()
    resume_dir: Path | None = None
    if isinstance(config.resume, Path):
        resume_dir = config.resume
    elif config.resume and (out_dir / "last" / STATE_FILE).exists():
        resume_dir = out_dir / "last"
    if resume_dir is not None:
        drift = _config_drift(resume_dir, config)
        if drift and info.is_main:
            log.warning("resuming with a config that differs in %s", drift)
        state = load_checkpoint(resume_dir, model, optimizer, scheduler, scaler)
        if info.is_main:
            log.info("resumed from %s at step %d (epoch %d)", resume_dir, state.step, state.epoch)

    ddp: nn.Module = model
    if info.distributed:
        ddp = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )

    metrics: MetricsLog | None = None
    val_metrics: MetricsLog | None = None
    if info.is_main:
        tb_dir = out_dir / "tensorboard" if config.log == "tensorboard" else None
        metrics = MetricsLog(out_dir / "metrics.csv", state.step, tb_dir)
        val_metrics = MetricsLog(out_dir / "val.csv", state.step, None)
        config.save(out_dir / CONFIG_DUMP)
        log.info(
            "training %d places (%d images), validating %d places; %d steps/epoch, %d steps, "
            "world size %d, device %s, precision %s",
            len(train_places),
            len(train_ds),
            len(val_places),
            steps_per_epoch,
            total_steps,
            info.world_size,
            device,
            "fp32" if amp_dtype is None else config.precision,
        )

    def autocast() -> AbstractContextManager[object]:
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    result = TrainResult(out_dir, state.step, state.epoch, None, None, None)
    validated_at: list[int] = []
    last_dir = out_dir / "last"
    best_dir = out_dir / "best"

    def validate() -> None:
        validated_at.append(state.step)
        if info.is_main and val_ds is not None:
            t0 = time.perf_counter()
            r = place_recall(
                model,
                val_ds,
                rerank_top=config.val_rerank_top,
                batch_size=config.val_batch_size,
                device=device,
                autocast=autocast(),
            )
            row: dict[str, float] = {"step": state.step, "epoch": state.epoch, **r}
            row["val_s"] = time.perf_counter() - t0
            assert val_metrics is not None
            val_metrics.write(row)
            result.val_history.append(row)
            log.info("step %d: %s", state.step, " ".join(f"{k}={v:.3f}" for k, v in r.items()))
            if r["R@1"] > state.best_r1:
                state.best_r1 = r["R@1"]
                save_cmpl(model, best_dir)
                (best_dir / "metrics.json").write_text(
                    json.dumps({"step": state.step, "epoch": state.epoch, **r}, indent=2),
                    encoding="utf-8",
                )
        _barrier(info)

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(last_dir, model, config, state, optimizer, scheduler, scaler)
            result.last_checkpoint = last_dir
        _barrier(info)

    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (info.is_main and config.progress),
        dynamic_ncols=True,
    )
    stop_at = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    sums: dict[str, float] = {}
    t_last = time.perf_counter()
    steps_since_log = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    while state.step < stop_at and state.epoch < config.epochs:
        sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        loader = DataLoader(
            train_ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        micro = 0
        epoch_before = (state.epoch, state.batch_in_epoch)
        for batch in loader:
            assert isinstance(batch, PlaceBatch)
            if state.batch_in_epoch >= batches_per_epoch:
                break
            batch = batch.to(device, non_blocking=True)
            micro += 1
            last_micro = micro % config.grad_accum == 0
            with _maybe_no_sync(ddp, skip_sync=not last_micro):
                with autocast():
                    img, txt = ddp(batch.images, batch.text)
                img32, txt32 = _float_features(img, txt, batch.text_index)
                aux = aux_loss_weight(
                    state.step, config.gs_only_warmup_steps, config.aux_ramp_steps
                )
                loss, terms = loss_fn(img32, txt32, batch.labels, aux_weight=aux)
                scaler.scale(loss / config.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / config.grad_accum
            state.batch_in_epoch += 1
            if not last_micro:
                continue

            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = float(scheduler.get_last_lr()[0])
            scheduler.step()
            state.step += 1
            steps_since_log += 1
            bar.update()
            end_of_epoch = state.batch_in_epoch >= batches_per_epoch

            if state.step % config.log_every == 0 or state.step == stop_at:
                avg = _reduce_mean(sums, info, device)
                now = time.perf_counter()
                row: dict[str, float] = {"step": state.step, "epoch": state.epoch, "lr": lr}
                row |= {f"loss/{k}": v for k, v in sorted(avg.items())}
                if config.gs_only_warmup_steps or config.aux_ramp_steps:
                    row["aux_weight"] = aux
                row["steps_per_s"] = steps_since_log / max(now - t_last, 1e-9)
                row["samples_per_s"] = (
                    row["steps_per_s"] * config.grad_accum * len(batch) * info.world_size
                )
                if device.type == "cuda":
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if info.is_main:
                    assert metrics is not None
                    metrics.write(row)
                    result.history.append(row)
                    bar.set_postfix(loss=f"{avg.get('total', float('nan')):.4f}", lr=f"{lr:.2e}")
                sums = {}
                t_last = now
                steps_since_log = 0

            val_due = (
                end_of_epoch if config.val_every is None else state.step % config.val_every == 0
            )
            if val_due:
                validate()
            if end_of_epoch:
                # Store the position as "start of next epoch" so a resume never replays the
                # epoch-end validation or an empty tail of this epoch.
                state.epoch += 1
                state.batch_in_epoch = 0
            periodic = config.checkpoint_every is not None and (
                state.step % config.checkpoint_every == 0
            )
            if periodic or end_of_epoch or state.step >= stop_at:
                checkpoint()
            if end_of_epoch or state.step >= stop_at:
                break
        if (state.epoch, state.batch_in_epoch) == epoch_before:
            raise RuntimeError(f"epoch {state.epoch} yielded no batch (sampler/config mismatch)")
    bar.close()

    finished = state.step >= total_steps or state.epoch >= config.epochs
    if finished and val_ds is not None and state.step not in validated_at:
        validate()  # e.g. max_steps ended mid-epoch, after the last scheduled validation
    if metrics is not None:
        metrics.close()
    if val_metrics is not None:
        val_metrics.close()
    result.step = state.step
    result.epoch = state.epoch
    if (last_dir / STATE_FILE).exists():
        result.last_checkpoint = last_dir
    if (best_dir / WEIGHTS_FILE).exists():
        result.best_checkpoint = best_dir
        result.best_r1 = state.best_r1
    return result
