"""Build, save and load CMPL retrievers.

Weights are always explicit: a config without `pretrained` only builds with
allow_random=True, so an untrained retriever can never end up behind a map by accident.
Checkpoints are a safetensors file plus the config JSON beside it; loading never unpickles.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import load_model, save_model
from torch import nn

from .config import CMPLConfig
from .long_text import LongTextTokenizer, stretch_text_tower, text_tower_owner
from .model import CMPL

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cmpl_config.json"
CHECKPOINT_FORMAT = "dlgpr-cmpl/1"


class MissingWeightsError(RuntimeError):
    """A retriever would be built with random weights without allow_random=True."""


def _clip_from_dict(model_cfg: dict[str, Any]) -> nn.Module:
    cfg = copy.deepcopy(model_cfg)
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    if custom_text:
        return CustomTextCLIP(**cfg)
    return CLIP(**cfg)


def build_clip(config: CMPLConfig, allow_random: bool = False) -> nn.Module:
    """The open_clip backbone of `config`, with its pretrained weights when it names any."""
    if config.pretrained is None and not allow_random:
        raise MissingWeightsError(
            "CMPLConfig.pretrained is None: pass allow_random=True to train from scratch"
        )
    if isinstance(config.backbone, str):
        if config.pretrained is None:
            log.warning("building %s with random weights", config.backbone)
        model = open_clip.create_model(
            config.backbone,
            pretrained=config.pretrained,
            require_pretrained=bool(config.pretrained),
        )
        assert isinstance(model, nn.Module)
        return model
    model = _clip_from_dict(config.backbone)
    if config.pretrained is None:
        log.warning("building an inline open_clip config with random weights")
        return model
    path = Path(config.pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"with an inline backbone config, pretrained must be a checkpoint file: {path}"
        )
    open_clip.load_checkpoint(model, str(path))
    return model


def create_cmpl(config: CMPLConfig, allow_random: bool = False) -> CMPL:
    """Backbone (+ weights), Long-CLIP stretching, fine branch and tokenizer, ready to train.

    Stretching runs after the weights are loaded, so it stretches the trained positions.
    """
    clip = build_clip(config, allow_random=allow_random)
    lt = config.long_text
    if lt.stretch_positions:
        context = stretch_text_tower(clip, lt.keep_positions, lt.stretch_factor)
    else:
        context = int(text_tower_owner(clip).positional_embedding.shape[0])
    tokenizer = LongTextTokenizer(context, overflow=lt.overflow, max_chunks=lt.max_chunks)
    return CMPL(clip, config, tokenizer)


def image_preprocess(model: CMPL, is_train: bool = False) -> Any:
    """open_clip's image transform for the backbone's input size (CLIP mean/std)."""
    visual: Any = model.clip.visual
    size = visual.image_size
    return open_clip.image_transform(size, is_train=is_train)


def save_cmpl(model: CMPL, directory: str | Path) -> Path:
    """Write `model.safetensors` and `cmpl_config.json` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
    meta = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def load_cmpl(directory: str | Path, device: str | torch.device = "cpu") -> CMPL:
    """Rebuild the architecture from the config (no download) and fill it from safetensors."""
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory} is not a {CHECKPOINT_FORMAT} checkpoint")
    config = CMPLConfig.from_dict(meta["config"])
    # The skeleton must not fetch the original pretrained weights: the file overwrites them.
    skeleton = config.model_copy(update={"pretrained": None})
    model = create_cmpl(skeleton, allow_random=True)
    model.config = config
    missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    if missing or unexpected:  # strict=True raises first; kept for clarity of intent
        raise RuntimeError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    return model.to(device).eval()
