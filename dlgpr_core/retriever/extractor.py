"""Shared fine-grained extractor E_f with per-level instance-concept queries (paper Eq. 4).

One cross-attention block serves both modalities: forcing image patches and text tokens
through the same distillation is what puts their level-l features in one space. Only the
input projections (different widths and statistics per tower and depth) and the queries
(one set of semantic anchors per level) are not shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Modality = Literal["image", "text"]


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block whose queries attend to a separate token set."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, q: Tensor, kv: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q [B, Q, d], kv [B, N, d]; key_padding_mask [B, N], True = ignore that token."""
        kv = self.ln_kv(kv)
        x = (
            q
            + self.attn(
                self.ln_q(q), kv, kv, key_padding_mask=key_padding_mask, need_weights=False
            )[0]
        )
        return x + self.mlp(self.ln_2(x))


class FineGrainedExtractor(nn.Module):
    """F^(l) = E_f(Q^(l), tokens^(l)) -> [B, n_queries, dim], each query token L2-normalised."""

    def __init__(
        self,
        levels: Sequence[int],
        vision_width: int | Mapping[int, int],
        text_width: int | Mapping[int, int],
        n_queries: int = 16,
        dim: int = 256,
        heads: int = 8,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.levels = list(levels)
        self.n_queries = n_queries
        self.dim = dim

        def proj(width: int) -> nn.Module:
            # Residual-stream states grow in scale with depth; normalise before projecting.
            return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

        def width(w: int | Mapping[int, int], level: int) -> int:
            # One width for a ViT's levels; one per level for a CNN's stages (the towers).
            return w if isinstance(w, int) else int(w[level])

        self.image_in = nn.ModuleDict(
            {str(lv): proj(width(vision_width, lv)) for lv in self.levels}
        )
        self.text_in = nn.ModuleDict({str(lv): proj(width(text_width, lv)) for lv in self.levels})
        self.queries = nn.ParameterDict(
            {str(lv): nn.Parameter(torch.randn(n_queries, dim) * dim**-0.5) for lv in self.levels}
        )
        self.block = CrossAttentionBlock(dim, heads, mlp_ratio)
        self.ln_out = nn.LayerNorm(dim)

    def forward(
        self,
        level: int,
        tokens: Tensor,
        modality: Modality,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        key = str(level)
        proj = self.image_in[key] if modality == "image" else self.text_in[key]
        kv = proj(tokens)
        q = self.queries[key].unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out = self.ln_out(self.block(q, kv, key_padding_mask))
        return F.normalize(out, dim=-1)


def text_padding_mask(ids: Tensor, eot_positions: Tensor) -> Tensor:
    """True after the end-of-text token: those states are padding under a causal mask."""
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return pos > eot_positions.unsqueeze(1)
