"""The CMPL retriever: an open_clip CLIP plus the multi-level fine-grained branch (Sec. 4.2).

The towers are walked block by block instead of through open_clip's forward, because the
fine branch needs the token states after chosen blocks and the saliency filter needs each
block's CLS attention, neither of which the stock forward exposes in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import CMPLConfig
from .extractor import FineGrainedExtractor, text_padding_mask
from .features import ImageFeatures, TextFeatures
from .hf_text import hf_text_tower
from .long_text import LongTextTokenizer, TokenizedText, text_tower_owner
from .saliency import SaliencyFilter, cls_patch_attention
from .similarity import pairwise_similarity

__all__ = ["CMPL", "ImageFeatures", "TextFeatures"]


def _mean_by_owner(x: Tensor, owner: Tensor, n: int) -> Tensor:
    """Average the rows of each owner and renormalise (chunked long text -> one embedding)."""
    out = torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    out = out.index_add(0, owner, x)
    return F.normalize(out, dim=-1)


def _run_block(block: nn.Module, x: Tensor, attn_mask: Tensor | None, ckpt: bool) -> Tensor:
    if ckpt and torch.is_grad_enabled():
        out = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
    else:
        out = block(x, attn_mask=attn_mask)
    assert isinstance(out, Tensor)
    return out


class CMPL(nn.Module):
    """Global CLIP embeddings plus per-level query-token features for both modalities.

    Level keys are the vision tower's 1-based block indices; the text level of the same slot
    may differ when the towers have different depths (`level_pairs`). The text tower is either
    open_clip's own transformer (walked block by block) or a Hugging Face encoder (a
    CustomTextCLIP's HFTextEncoder, read through its hidden states).
    """

    def __init__(self, clip: nn.Module, config: CMPLConfig, tokenizer: LongTextTokenizer) -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise NotImplementedError("CMPL needs open_clip's VisionTransformer image tower")
        if not visual.transformer.batch_first:
            raise NotImplementedError("CMPL expects batch-first transformers")
        hf = hf_text_tower(clip)
        if hf is not None:
            hf_cfg: Any = hf.config
            text_width = int(hf_cfg.hidden_size)
            text_depth = int(hf_cfg.num_hidden_layers)
        else:
            text = text_tower_owner(clip)
            if getattr(text, "use_pad_mask", False):
                raise NotImplementedError(
                    "bidirectional open_clip text towers with pad masks are not supported"
                )
            text_width = int(text.transformer.width)
            text_depth = len(text.transformer.resblocks)
        self.clip = clip
        self.config = config
        self.tokenizer = tokenizer
        v_levels = config.resolve_levels(len(visual.transformer.resblocks))
        t_levels = config.resolve_text_levels(text_depth)
        if len(v_levels) != len(t_levels):
            raise ValueError(f"tower levels do not pair up: {v_levels} vs {t_levels}")
        self.level_pairs: list[tuple[int, int]] = list(zip(v_levels, t_levels, strict=True))
        self.extractor: FineGrainedExtractor | None = None
        self.saliency: SaliencyFilter | None = None
        if config.use_fine:
            self.extractor = FineGrainedExtractor(
                v_levels,
                vision_width=visual.transformer.width,
                text_width=text_width,
                n_queries=config.n_queries,
                dim=config.fine_dim,
                heads=config.fine_heads,
                mlp_ratio=config.fine_mlp_ratio,
            )
            if config.saliency_active:
                self.saliency = SaliencyFilter(config.keep_ratio)

    @property
    def levels(self) -> list[int]:
        return [v for v, _ in self.level_pairs] if self.extractor is not None else []

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def tokenize(self, texts: Sequence[str]) -> TokenizedText:
        return self.tokenizer(texts)

    # -- towers ------------------------------------------------------------------------------

    def encode_image(self, images: Tensor) -> ImageFeatures:
        visual: Any = self.clip.visual
        x = visual._embeds(images)
        wanted = {v: v for v, _ in self.level_pairs} if self.extractor is not None else {}
        ckpt = bool(visual.transformer.grad_checkpointing)
        fine: dict[int, Tensor] = {}
        kept: dict[int, Tensor] = {}
        for i, block in enumerate(visual.transformer.resblocks, start=1):
            scores = cls_patch_attention(block, x) if self.saliency and i in wanted else None
            x = _run_block(block, x, None, ckpt)
            if i in wanted and self.extractor is not None:
                patches = x[:, 1:]
                if self.saliency is not None and scores is not None:
                    patches, kept[i] = self.saliency(patches, scores)
                fine[i] = self.extractor(i, patches, "image")
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageFeatures(F.normalize(pooled, dim=-1), fine, kept)

    def encode_text(self, text: Tensor | TokenizedText) -> TextFeatures:
        """Token ids [B, L] or a TokenizedText (chunks of one text are averaged)."""
        tok = text if isinstance(text, TokenizedText) else None
        ids = tok.ids if tok is not None else text
        assert isinstance(ids, Tensor)
        hf = hf_text_tower(self.clip)
        if hf is not None:
            pooled, fine = self._encode_text_hf(hf, ids)
        else:
            pooled, fine = self._encode_text_clip(ids)
        pooled = F.normalize(pooled, dim=-1)
        if tok is not None and tok.ids.shape[0] != tok.n_texts:
            pooled = _mean_by_owner(pooled, tok.owner, tok.n_texts)
            fine = {lv: _mean_by_owner(f, tok.owner, tok.n_texts) for lv, f in fine.items()}
        return TextFeatures(pooled, fine)

    def _encode_text_hf(self, hf: HFTextEncoder, ids: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Level tokens are the encoder's hidden states after the paired layers; the global
        embedding is exactly open_clip's HFTextEncoder output (pooler + projection)."""
        cfg: Any = hf.config
        limit = int(hf.context_length)
        if ids.shape[1] > limit:
            raise ValueError(f"{ids.shape[1]} tokens exceed the {limit} positions")
        attn = (ids != cfg.pad_token_id).long()
        want_states = self.extractor is not None
        out = hf.transformer(input_ids=ids, attention_mask=attn, output_hidden_states=want_states)
        fine: dict[int, Tensor] = {}
        if self.extractor is not None:
            key_pad = attn == 0
            # hidden_states[0] is the embedding output, [i] the output of layer i.
            for v_level, t_level in self.level_pairs:
                states = out.hidden_states[t_level]
                fine[v_level] = self.extractor(v_level, states, "text", key_padding_mask=key_pad)
        pooled = hf.proj(hf.pooler(out, attn))
        return pooled, fine

    def _encode_text_clip(self, ids: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        owner: Any = text_tower_owner(self.clip)
        length = ids.shape[1]
        if length > owner.positional_embedding.shape[0]:
            raise ValueError(
                f"{length} tokens exceed the {owner.positional_embedding.shape[0]} positions"
            )
        x = owner.token_embedding(ids) + owner.positional_embedding[:length]
        attn_mask = owner.attn_mask[:length, :length] if owner.attn_mask is not None else None
        # CLIP's end-of-text token has the highest id; its position bounds the real tokens.
        eot = ids.argmax(dim=-1)
        key_pad = text_padding_mask(ids, eot)
        by_text_level = {t: v for v, t in self.level_pairs} if self.extractor is not None else {}
        ckpt = bool(owner.transformer.grad_checkpointing)
        fine: dict[int, Tensor] = {}
        for i, block in enumerate(owner.transformer.resblocks, start=1):
            x = _run_block(block, x, attn_mask, ckpt)
            if i in by_text_level and self.extractor is not None:
                level = by_text_level[i]
                fine[level] = self.extractor(level, x, "text", key_padding_mask=key_pad)
        x = owner.ln_final(x)
        pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
        eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))
        pooled = text_global_pool(x, ids, pool_type, eos_token_id=eos_id)
        proj = owner.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        assert isinstance(pooled, Tensor)
        return pooled, fine

    def forward(
        self, images: Tensor, text: Tensor | TokenizedText
    ) -> tuple[ImageFeatures, TextFeatures]:
        return self.encode_image(images), self.encode_text(text)

    # -- scoring -----------------------------------------------------------------------------

    @staticmethod
    def fine_similarity(img_fine: Tensor, txt_fine: Tensor) -> Tensor:
        """[Bi, Bt] mean over query tokens of the cosine between matching query tokens."""
        return pairwise_similarity(img_fine, txt_fine)

    def level_weights(self) -> list[float]:
        weights = self.config.score_level_weights
        n = len(self.levels)
        if weights is None:
            return [1.0 / n] * n if n else []
        if len(weights) != n:
            raise ValueError(
                f"score_level_weights has {len(weights)} weights for levels {self.levels}"
            )
        total = sum(weights)
        return [w / total for w in weights]

    def score(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """Retrieval score [Bi, Bt]: global cosine + score_fine_weight * weighted level mean."""
        s = img.global_ @ txt.global_.t()
        w = self.config.score_fine_weight
        if w and img.fine and txt.fine:
            for level, lw in zip(self.levels, self.level_weights(), strict=True):
                s = s + w * lw * self.fine_similarity(img.fine[level], txt.fine[level])
        return s
