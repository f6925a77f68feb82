"""CMPL training: one config object, seeded, DDP-ready, resumable to the same loss curve.

Style follows the VPR codebases (GSV-Cities/MixVPR/BoQ) and open_clip's `open_clip_train`:
a single `TrainConfig` describes a run completely (it is written beside every checkpoint),
data (`..data`) is apart from the model, and the loop is plain PyTorch. The modules:

- `params`: `TrainConfig` and its YAML loading (bases, dotted overrides);
- `distributed`: torchrun process group, barrier, rank mean, DDP no-sync;
- `precision`: the autocast dtype and GradScaler for fp32/bf16/fp16;
- `rng`: seeding and the RNG states a checkpoint carries;
- `checkpoint`: `TrainState`, save/load of a resumable checkpoint, config drift;
- `metrics_log`: the CSV/TensorBoard `MetricsLog`;
- `schedule`: parameter groups, LR schedule, auxiliary-loss ramp;
- `loop`: `train()` and `TrainResult`.
"""

from dlgpr_core.config import ConfigError

from .checkpoint import (
    CONFIG_DUMP,
    STATE_FILE,
    STATE_FORMAT,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import DistInfo, init_distributed
from .loop import TrainResult, train
from .metrics_log import MetricsLog
from .params import TrainConfig
from .precision import Precision, choose_precision
from .rng import seed_everything
from .schedule import aux_loss_weight, lr_factor, param_groups

__all__ = [
    "CONFIG_DUMP",
    "STATE_FILE",
    "STATE_FORMAT",
    "ConfigError",
    "DistInfo",
    "MetricsLog",
    "Precision",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "aux_loss_weight",
    "choose_precision",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "save_checkpoint",
    "seed_everything",
    "train",
]
