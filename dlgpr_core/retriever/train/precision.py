"""Mixed precision choice: the autocast dtype and whether a GradScaler is needed.

Autocast only runs on CUDA; a bf16/fp16 request on a CPU falls back to fp32 (logged) so one
config serves a laptop smoke run and a GPU run alike.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

__all__ = ["Precision", "choose_precision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # None: plain fp32, no autocast
    use_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 do not
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> AbstractContextManager[object]:
        """A fresh autocast context (or a no-op one for fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a pass-through unless fp16 needs it (its state still saves)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


def choose_precision(precision: str, device: torch.device) -> Precision:
    """What `precision` ("fp32", "bf16", "fp16") means on `device`."""
    if precision == "fp32":
        return Precision(None, False, device.type)
    if device.type != "cuda":
        log.info("precision=%s requested on %s: running fp32", precision, device.type)
        return Precision(None, False, device.type)
    if precision == "bf16":
        return Precision(torch.bfloat16, False, device.type)
    return Precision(torch.float16, True, device.type)
