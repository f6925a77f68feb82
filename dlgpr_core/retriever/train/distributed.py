"""torchrun process group plumbing: who this process is, and the few collectives the loop uses.

Plain DistributedDataParallel rather than accelerate: the loop needs exact control of
accumulation, RNG and resume, and plain DDP keeps that visible. Every helper is a no-op in a
single-process run, so the loop reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "barrier",
    "init_distributed",
    "no_sync",
    "reduce_mean",
    "shutdown_distributed",
    "wrap_ddp",
]


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


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group only when `init_distributed` created it (a caller that set
    one up itself keeps it)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Mean of each value over the ranks (every rank must pass the same keys)."""
    if not info.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """The module the forward pass goes through: `model` itself, or a DDP wrapper of it."""
    if not info.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


@contextmanager
def no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce for a micro-batch that is not the last of its step."""
    if skip_sync and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield
