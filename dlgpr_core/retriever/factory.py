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
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import load_model, save_model
from torch import nn

from dlgpr_core.encoders.towers import quiet_transformers

from .config import CMPLConfig
from .hf_text import (
    hf_text_tower,
    is_hf_text_cfg,
    resolve_hf_text_cfg,
    text_weights_requested,
    verify_text_weights,
)
from .long_text import HFTokenAdapter, LongTextTokenizer, stretch_text_tower, text_tower_owner
from .model import CMPL

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cmpl_config.json"
CHECKPOINT_FORMAT = "dlgpr-cmpl/1"


class MissingWeightsError(RuntimeError):
    """A retriever would be built with random weights without allow_random=True."""


def _clip_from_dict(model_cfg: dict[str, Any], text_weights: bool = True) -> nn.Module:
    cfg = copy.deepcopy(model_cfg)
    custom_text = bool(cfg.pop("custom_text", False)) or is_hf_text_cfg(cfg)
    if not custom_text:
        return CLIP(**cfg)
    if not is_hf_text_cfg(cfg):
        return CustomTextCLIP(**cfg)
    text_cfg = resolve_hf_text_cfg(cfg["text_cfg"], load_weights=text_weights)
    cfg["text_cfg"] = text_cfg
    with quiet_transformers():
        model = CustomTextCLIP(**cfg)
    if text_cfg["hf_model_pretrained"]:
        tower = hf_text_tower(model)
        assert tower is not None
        verify_text_weights(tower, text_cfg["hf_model_name"])
    return model


def build_clip(
    config: CMPLConfig, allow_random: bool = False, text_weights: bool = True
) -> nn.Module:
    """The open_clip backbone of `config`, with its pretrained weights when it names any.

    A Hugging Face text tower loads its own pretrained weights (and they are checked), so
    allow_random=True only lets the *vision* tower start random; a random HF text tower needs
    `hf_model_pretrained: false` in text_cfg as well. text_weights=False builds the text
    architecture only, for a skeleton that a checkpoint fills right after.
    """
    if config.pretrained is None and not allow_random:
        raise MissingWeightsError(
            "CMPLConfig.pretrained is None: pass allow_random=True to train from scratch"
        )
    if not text_weights and not allow_random:
        raise MissingWeightsError("text_weights=False builds a random text tower: allow_random")
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
    hf_text = is_hf_text_cfg(config.backbone)
    if hf_text and not text_weights_requested(config.backbone["text_cfg"]):
        if not allow_random:
            raise MissingWeightsError("hf_model_pretrained is false: pass allow_random=True")
        log.warning("text_cfg.hf_model_pretrained is false: the HF text tower is random")
    model = _clip_from_dict(config.backbone, text_weights=text_weights)
    if config.pretrained is None:
        if hf_text:
            log.warning("building an inline open_clip config with a random vision tower")
        else:
            log.warning("building an inline open_clip config with random weights")
        return model
    path = Path(config.pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"with an inline backbone config, pretrained must be a checkpoint file: {path}"
        )
    open_clip.load_checkpoint(model, str(path))
    return model


def _hf_tokenizer(config: CMPLConfig, tower: HFTextEncoder) -> LongTextTokenizer:
    """The tower's own tokenizer from its local directory, with the same overflow policy.

    No Long-CLIP stretching: the encoder's learned positions (512 for MiniLM) already hold
    whole descriptions, and stretching a BERT's absolute positions is untested territory.
    """
    assert isinstance(config.backbone, dict)
    text_cfg = resolve_hf_text_cfg(config.backbone["text_cfg"], load_weights=False)
    adapter = HFTokenAdapter(text_cfg["hf_tokenizer_name"])
    pad = getattr(tower.config, "pad_token_id", None)
    if pad != adapter.pad_token_id:
        raise ValueError(f"tokenizer pads with {adapter.pad_token_id}, the model masks {pad}")
    context = int(tower.context_length)
    lt = config.long_text
    if lt.stretch_positions:
        log.info("HF text tower has %d positions: long-text stretching skipped", context)
    return LongTextTokenizer(
        context,
        overflow=lt.overflow,
        max_chunks=lt.max_chunks,
        tokenizer=adapter,
        pad_id=adapter.pad_token_id,
        pad_to_longest=True,
    )


def create_cmpl(config: CMPLConfig, allow_random: bool = False, text_weights: bool = True) -> CMPL:
    """Backbone (+ weights), Long-CLIP stretching, fine branch and tokenizer, ready to train.

    Stretching runs after the weights are loaded, so it stretches the trained positions.
    """
    clip = build_clip(config, allow_random=allow_random, text_weights=text_weights)
    lt = config.long_text
    hf = hf_text_tower(clip)
    if hf is not None:
        tokenizer = _hf_tokenizer(config, hf)
    else:
        if lt.stretch_positions:
            context = stretch_text_tower(clip, lt.keep_positions, lt.stretch_factor)
        else:
            context = int(text_tower_owner(clip).positional_embedding.shape[0])
        tokenizer = LongTextTokenizer(context, overflow=lt.overflow, max_chunks=lt.max_chunks)
    if config.lock_text:
        lock: Any = getattr(clip, "lock_text_tower", None)
        if lock is None:
            raise NotImplementedError(f"{type(clip).__name__} cannot lock its text tower")
        lock(unlocked_layers=config.lock_text_unlocked_layers, freeze_layer_norm=True)
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
    # An HF text tower is rebuilt from its (pkg:) reference as architecture + tokenizer only.
    skeleton = config.model_copy(update={"pretrained": None})
    model = create_cmpl(skeleton, allow_random=True, text_weights=False)
    model.config = config
    missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    if missing or unexpected:  # strict=True raises first; kept for clarity of intent
        raise RuntimeError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    return model.to(device).eval()
