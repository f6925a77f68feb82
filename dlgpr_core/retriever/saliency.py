"""Saliency filtering module (SFM): keep the patch tokens the CLS token attends to most.

Street views are mostly road, sky and facade texture shared by every place; the tokens the
CLS query looks at carry the place-specific cues. Selection happens only on the copies fed
to the fine-grained branch; the backbone itself always sees every token.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def n_kept(n_tokens: int, keep_ratio: float) -> int:
    """At least one token survives; 1.0 keeps all."""
    return max(1, min(n_tokens, round(keep_ratio * n_tokens)))


@torch.no_grad()
def cls_patch_attention(block: Any, x: Tensor) -> Tensor:
    """Head-averaged softmax attention of the CLS token on each patch token, [B, N].

    `x` is the block *input* [B, 1+N, W] (CLS first). The weights are recomputed from the
    block's own q/k projections of ln_1(x), so this is exactly the attention the block applies,
    over all keys including CLS itself, without running the block with need_weights.
    No gradient: only the ranking is used, and top-k indices are not differentiable anyway.
    """
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise NotImplementedError(
            f"saliency needs open_clip's ResidualAttentionBlock (nn.MultiheadAttention), "
            f"got {type(block).__name__}"
        )
    if not attn.batch_first:
        raise NotImplementedError("saliency expects a batch-first transformer")
    h = block.ln_1(x)
    width = h.shape[-1]
    heads = attn.num_heads
    head_dim = width // heads
    w_q, w_k, _ = attn.in_proj_weight.split(width, dim=0)
    b_q: Tensor | None = None
    b_k: Tensor | None = None
    if attn.in_proj_bias is not None:
        b_q, b_k, _ = attn.in_proj_bias.split(width, dim=0)
    q = F.linear(h[:, :1], w_q, b_q)  # [B, 1, W]
    k = F.linear(h, w_k, b_k)  # [B, 1+N, W]
    bsz, n_keys, _ = k.shape
    q = q.view(bsz, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    k = k.view(bsz, n_keys, heads, head_dim).transpose(1, 2)  # [B, H, 1+N, hd]
    weights = ((q @ k.transpose(-1, -2)) / math.sqrt(head_dim)).softmax(dim=-1)
    return weights.mean(dim=1)[:, 0, 1:]


class SaliencyFilter(nn.Module):
    """Top-`keep_ratio` patch tokens by CLS attention, kept in their spatial order."""

    def __init__(self, keep_ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.keep_ratio = keep_ratio

    def forward(self, tokens: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, N, W], scores [B, N] -> (kept tokens [B, k, W], their indices [B, k]).

        Gradients flow into the kept tokens; the choice of indices is a hard decision.
        """
        n = tokens.shape[1]
        k = n_kept(n, self.keep_ratio)
        if k == n:
            idx = torch.arange(n, device=tokens.device).expand(tokens.shape[0], n)
            return tokens, idx
        idx = scores.topk(k, dim=1).indices.sort(dim=1).values
        kept = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return kept, idx

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}"
