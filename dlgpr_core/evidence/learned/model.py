"""The evidence heads: per-cell category and attribute logits over frozen trunk features.

Input: the trunk's stride-8, -16 and -32 maps of one image (`features.FrozenTower`). The
stride-8 map is folded onto the stride-16 grid by space-to-depth (its 2x2 cells become
channels, so the fine detail a sign or a door needs survives), the stride-32 map is
upsampled; a 1x1 convolution fuses them and a few 3x3 convolutions give each cell its
neighbourhood. Outputs, all on the stride-16 grid:

- category logits per cell (background + the ontology's categories);
- per attribute (one head per attribute name, over the union of that attribute's values):
  value logits per cell and, with attention pooling, an attention score per cell;
- street-attribute logits per image, from the mean- and max-pooled grid.

A category's attribute distribution in one image pools its cells (`pool_attribute`), the same
function in training (over an element's own cells) and in the annotator (over the cells the
category head assigns to that category), so what is trained is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadsConfig
from .signs import SignReader
from .vocab import LabelVocab

NEG = -1e4
"""Logit given to values a category cannot take (finite, so fp16 and sums stay finite)."""
EPS = 1e-6
"""Floor of the probabilities the evidence model takes logs of or divides by."""


@dataclass
class HeadOutputs:
    classes: torch.Tensor
    """(B, K + 1, H, W) category logits."""
    attributes: dict[str, torch.Tensor]
    """attribute -> (B, V, H, W) value logits."""
    attention: dict[str, torch.Tensor]
    """attribute -> (B, H, W) attention scores (empty with mean pooling)."""
    street: dict[str, torch.Tensor]
    """street attribute -> (B, V) logits."""


def _key(attribute: str) -> str:
    """ModuleDict keys cannot hold dots or spaces; attribute names are plain words today."""
    return attribute.replace(" ", "_").replace(".", "_")


class EvidenceHeads(nn.Module):
    def __init__(self, channels: Mapping[int, int], vocab: LabelVocab, config: HeadsConfig) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = config
        self.strides = sorted(int(s) for s in config.strides)
        if 16 not in self.strides:
            raise ValueError("the heads' grid is the stride-16 map: strides must include 16")
        fold = {s: (16 // s) ** 2 if s < 16 else 1 for s in self.strides}
        in_ch = sum(channels[s] * fold[s] for s in self.strides)
        h = config.hidden
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, h, 1, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU(inplace=True),
        ]
        for _ in range(config.context_layers):
            if config.separable:
                layers += [nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)]
                layers += [nn.Conv2d(h, h, 1, bias=False)]
            else:
                layers += [nn.Conv2d(h, h, 3, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(h), nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout2d(config.dropout)
        self.classes = nn.Conv2d(h, vocab.n_classes, 1)
        # One 1x1 convolution for every attribute head (and its attention score): 28 small
        # convolutions cost more in dispatch than in arithmetic on a CPU.
        self._split = [(a, len(v)) for a, v in vocab.attributes.items()]
        self._attend = config.attribute_pooling == "attention"
        n_out = sum(n for _, n in self._split) + (len(self._split) if self._attend else 0)
        self.attribute_head = nn.Conv2d(h, n_out, 1)
        self.reader: SignReader | None = (
            SignReader(len(vocab.attributes["name"]), config.reader)
            if config.reader.enabled and self._attend and "name" in vocab.attributes
            else None
        )
        self.street = nn.ModuleDict(
            {_key(a): nn.Linear(2 * h, len(v)) for a, v in vocab.street.items()}
        )
        for a, rows in vocab.allowed.items():
            self.register_buffer(
                f"allowed_{_key(a)}", torch.tensor(rows, dtype=torch.bool), persistent=False
            )

    def allowed(self, attribute: str) -> torch.Tensor:
        """(K + 1, V) bool: values each class's elements may take."""
        mask: torch.Tensor = getattr(self, f"allowed_{_key(attribute)}")
        return mask

    def fuse(self, feats: Mapping[int, torch.Tensor]) -> torch.Tensor:
        ref = feats[16]
        size = ref.shape[-2:]
        parts = []
        for s in self.strides:
            x = feats[s].float()
            if s < 16:
                f = 16 // s
                pad_h = (-x.shape[-2]) % f
                pad_w = (-x.shape[-1]) % f
                if pad_h or pad_w:
                    x = F.pad(x, (0, pad_w, 0, pad_h))
                x = F.pixel_unshuffle(x, f)
                x = x[..., : size[0], : size[1]]
            elif s > 16:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            parts.append(x)
        return torch.cat(parts, dim=1)

    def forward(self, feats: Mapping[int, torch.Tensor]) -> HeadOutputs:
        x = self.body(self.fuse(feats))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        x = self.drop(x)
        heads = self.attribute_head(x)
        attributes: dict[str, torch.Tensor] = {}
        attention: dict[str, torch.Tensor] = {}
        start = 0
        for attr, n in self._split:
            attributes[attr] = heads[:, start : start + n]
            start += n
        if self._attend:
            for i, (attr, _) in enumerate(self._split):
                attention[attr] = heads[:, start + i]
        return HeadOutputs(
            classes=self.classes(x),
            attributes=attributes,
            attention=attention,
            street={a: self.street[_key(a)](pooled) for a in self.vocab.street},
        )


def category_log_weights(classes: torch.Tensor) -> torch.Tensor:
    """log P(category | cell), (B, K, H, W) without the background, floored at EPS: one
    group per category, the weights the annotator pools a category's attributes with
    (`pool_attribute`) and chooses the sign reader's strip by."""
    return torch.log(torch.softmax(classes.float(), 1)[:, 1:].clamp_min(EPS))


def pool_attribute(
    logits: torch.Tensor,
    log_weights: torch.Tensor,
    allowed: torch.Tensor,
    attention: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-distributions over an attribute's values for groups of cells.

    logits (B, V, H, W); log_weights (B, G, H, W): the log-weight of each cell in each of G
    groups (0 for an element's own cells and -inf elsewhere in training; log P(category) in
    the annotator); allowed (B, G, V) bool: the values each group's category may take;
    attention (B, H, W) or None. Returns (B, G, V) log-probabilities (values not allowed get
    ~0 probability).

    Mean pooling averages the cells' distributions by weight; attention pooling averages the
    cells' logits by softmax(attention + log-weight), letting a few telling cells decide.
    """
    b, v, h, w = logits.shape
    flat = logits.reshape(b, v, h * w)
    lw = log_weights.reshape(b, log_weights.shape[1], h * w)
    mask = torch.where(allowed, 0.0, NEG).unsqueeze(-1)  # (B, G, V, 1)
    if attention is None:
        cell = torch.log_softmax(flat.unsqueeze(1) / temperature + mask, dim=2)  # (B,G,V,HW)
        wn = torch.log_softmax(lw, dim=-1).unsqueeze(2)  # (B, G, 1, HW)
        return torch.logsumexp(cell + wn, dim=-1)
    att = torch.softmax(attention.reshape(b, 1, h * w) + lw, dim=-1)  # (B, G, HW)
    pooled = torch.einsum("bgn,bvn->bgv", att, flat)
    return torch.log_softmax(pooled / temperature + mask[..., 0], dim=-1)
