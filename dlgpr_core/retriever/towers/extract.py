"""What the two frozen towers give CMPL: spatial maps and per-segment layer states.

Image side: the dlgpr-lite EfficientNet-Lite0 trunk (the same loading path as the encoder and
the evidence heads, `evidence.learned.features.FrozenTower`) at a fixed input size; its
output maps at the configured strides are the visual levels, its pooled final features the
input of the global head, and a saliency map says which cells the pooled feature is made of
(see `pooled_saliency`). Text side: all-MiniLM-L6-v2 from its package; every segment's
hidden states after the configured layers, mean-pooled over its tokens as sentence-
transformers pools, are that segment's token at each text level.

Both towers are frozen, so these outputs are computed once per image and per segment and
cached for training (`cache`), and the trained model (`model.TowerCMPL`) only ever sees them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from dlgpr_core.encoders.towers import TowerConfig, quiet_transformers, resolve_ref
from dlgpr_core.evidence.learned.features import FrozenTower

from .config import TowerCMPLConfig

TEXT_MAX_TOKENS = 128
"""MiniLM's training length; a segment (at most `segment_words` words) never reaches it."""


@dataclass
class ImageTowerOutput:
    """Frozen image features of a batch."""

    maps: dict[int, Tensor]  # stride -> [B, C, H, W]
    pooled: Tensor  # [B, P] mean of the trunk's final features (what dlgpr-lite's head reads)
    saliency: Tensor  # [B, H32, W32] at the deepest stride, see `pooled_saliency`


def pooled_saliency(final: Tensor) -> tuple[Tensor, Tensor]:
    """(pooled [B, P], saliency [B, H, W]) of the trunk's final feature map [B, P, H, W].

    A CNN has no CLS token whose attention the paper's saliency filter reads. The analogue
    here: the pooled feature g is the mean of the cells h_i, and a cell's share in it is
    <h_i, g> (the shares sum to N |g|^2). Cells of sky, road and wall contribute little to
    what the trunk recognises; signs, awnings and trees much.
    """
    pooled = final.mean(dim=(2, 3))
    return pooled, torch.einsum("bphw,bp->bhw", final, pooled)


def text_depth(config: TowerConfig) -> int:
    """Layers of the config's Hugging Face text tower (read from its config.json)."""
    path = resolve_ref(str(config.model_cfg["text_cfg"]["hf_model_name"]), config.base_dir)
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return int(data["num_hidden_layers"])


class TowerExtractor:
    """Both frozen towers of a `TowerCMPLConfig`, each loaded on first use."""

    def __init__(self, config: TowerCMPLConfig, device: str | None = None) -> None:
        self.config = config
        self.device = torch.device(device or "cpu")
        self.towers = TowerConfig.from_file(config.towers_config_path())
        self.depth = text_depth(self.towers)
        self.layers = sorted(set(config.text_levels or []) | {self.depth})
        if self.layers[0] < 1 or self.layers[-1] > self.depth:
            raise ValueError(f"text_levels {config.text_levels} outside MiniLM's 1..{self.depth}")

    # -- identity ----------------------------------------------------------------------------

    def image_key(self) -> dict[str, Any]:
        """What the image features depend on (cache keys, fingerprints)."""
        return {
            "towers": self.towers.as_identity(),
            "image_size": list(self.config.image_size),
            "strides": sorted(self.config.levels or []),
            "saliency": "pooled-share",
        }

    def text_key(self) -> dict[str, Any]:
        return {"towers": self.towers.as_identity(), "layers": self.layers, "pool": "mean"}

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- image tower -------------------------------------------------------------------------

    @cached_property
    def image_tower(self) -> FrozenTower:
        tower = FrozenTower(self.towers).to(self.device)
        strides = set(self.config.levels or [])
        taps = {s for s in strides if s in tower.channels()}
        if taps != strides:
            raise ValueError(f"the image trunk has no maps at strides {sorted(strides - taps)}")
        return tower

    def image_channels(self) -> dict[int, int]:
        return {
            s: c for s, c in self.image_tower.channels().items() if s in (self.config.levels or [])
        }

    def _resized(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        h, w = self.config.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            out.append(im if im.size == (w, h) else im.resize((w, h), Image.Resampling.BILINEAR))
        return out

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> ImageTowerOutput:
        tower = self.image_tower
        batch = tower.preprocess(self._resized(images)).to(self.device)
        maps = tower(batch)
        trunk: Any = tower.trunk
        final = trunk.bn2(trunk.conv_head(maps[max(maps)]))
        pooled, saliency = pooled_saliency(final)
        keep = {s: maps[s].float() for s in sorted(self.config.levels or [])}
        return ImageTowerOutput(keep, pooled.float(), saliency.float())

    # -- text tower --------------------------------------------------------------------------

    @cached_property
    def _text(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer

        text_cfg = self.towers.model_cfg["text_cfg"]
        model_dir = resolve_ref(str(text_cfg["hf_model_name"]), self.towers.base_dir)
        tok_dir = resolve_ref(
            str(text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"]),
            self.towers.base_dir,
        )
        with quiet_transformers():
            model = AutoModel.from_pretrained(str(model_dir)).to(self.device).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        for p in model.parameters():
            p.requires_grad_(False)
        return model, tokenizer

    @torch.inference_mode()
    def segment_features(self, segments: Sequence[str]) -> Tensor:
        """[S, len(layers), width]: each segment's mean-pooled states after each layer."""
        model, tokenizer = self._text
        width = int(model.config.hidden_size)
        if not segments:
            return torch.zeros((0, len(self.layers), width))
        enc = tokenizer(
            list(segments),
            padding=True,
            truncation=True,
            max_length=TEXT_MAX_TOKENS,
            return_tensors="pt",
        ).to(self.device)
        out = model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = [
            (out.hidden_states[layer] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            for layer in self.layers
        ]
        return torch.stack(pooled, dim=1).float().cpu()

    def layer_index(self, layer: int) -> int:
        """Position of a MiniLM layer in `segment_features`' second axis."""
        return self.layers.index(layer)
