"""Reading and writing weight files without executing code from them.

Checkpoints come from users and from the network; pickle can run arbitrary code, so only
safetensors and `torch.load(weights_only=True)` are ever used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors or a torch file (weights only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    out = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def load_partial(model: nn.Module, path: str | Path) -> set[str]:
    """Load a checkpoint that may cover only part of `model`; return the names it set.

    Unexpected names raise: a checkpoint trained for another architecture must not be
    half-applied.
    """
    state = load_state_dict_safely(path)
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ValueError(f"{path}: keys not in the model: {unexpected[:10]}")
    wrong = [k for k, v in state.items() if own[k].shape != v.shape]
    if wrong:
        shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:5]]
        raise ValueError(f"{path}: shape mismatch (name, file, model): {shapes}")
    model.load_state_dict(state, strict=False)
    return set(state)


def save_trained(model: nn.Module, names: Iterable[str], path: str | Path) -> Path:
    """Write only the named parameters/buffers (the trained heads), as safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = model.state_dict()
    tensors = {n: _cpu_fp32(own[n]) for n in sorted(names)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _cpu_fp32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    return (t.float() if t.is_floating_point() else t).contiguous()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
