"""What a CMPL tower outputs: the global embedding plus the per-level fine query tokens.

Plain data, apart from the model, so the losses, evaluation and the training loop can take
features without importing the model (and the model can import the losses' helpers without
a cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ImageFeatures", "TextFeatures"]


@dataclass
class ImageFeatures:
    global_: Tensor  # [B, D], L2-normalised open_clip image embedding
    fine: dict[int, Tensor] = field(default_factory=dict)  # level -> [B, Q, fine_dim]
    kept: dict[int, Tensor] = field(default_factory=dict)  # level -> kept patch indices [B, k]


@dataclass
class TextFeatures:
    global_: Tensor  # [B, D], L2-normalised open_clip text embedding
    fine: dict[int, Tensor] = field(default_factory=dict)  # level -> [B, Q, fine_dim]
