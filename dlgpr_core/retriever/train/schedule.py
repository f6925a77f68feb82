"""How the optimisation changes over a run: parameter groups, LR schedule, loss ramp.

Pure functions of the step and the config, so a resumed run recomputes exactly the values
an uninterrupted one used.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..model import CMPL

__all__ = ["aux_loss_weight", "lr_factor", "param_groups"]


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
