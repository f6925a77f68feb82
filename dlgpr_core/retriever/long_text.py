"""Long descriptions for a 77-position CLIP text tower.

The paper's descriptions average 155 words, twice what CLIP can see. Long-CLIP's
"knowledge-preserved stretching" keeps the well-trained first positions untouched and
interpolates the rarely-trained tail, which fine-tunes far better than re-learning positions.
Whatever still does not fit is truncated with a logged count or encoded in chunks, never cut
silently.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import Tensor, nn

log = logging.getLogger(__name__)


def stretched_length(length: int, keep: int = 20, factor: int = 4) -> int:
    """77 -> 4*77 - 3*20 = 248 for Long-CLIP's defaults."""
    return keep + factor * (length - keep)


def stretch_positional_embedding(pe: Tensor, keep: int = 20, factor: int = 4) -> Tensor:
    """Stretch [L, d] positions to [keep + factor*(L-keep), d].

    Rows < keep are copied exactly; new row keep + n sits at old position keep + n/factor,
    linearly interpolated; the last factor-1 rows lie past the old end and are extrapolated
    along the last two old rows (as Long-CLIP does).
    """
    length = pe.shape[0]
    if not 0 <= keep < length - 1:
        raise ValueError(f"keep={keep} must leave at least two positions of {length} to stretch")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    n_new = factor * (length - keep)
    src = keep + torch.arange(n_new, dtype=torch.float64) / factor
    lo = src.floor().long().clamp(max=length - 2)
    frac = (src - lo.to(torch.float64)).to(pe.dtype).unsqueeze(1)
    tail = pe[lo] + frac * (pe[lo + 1] - pe[lo])
    return torch.cat([pe[:keep], tail], dim=0)


def causal_mask(length: int) -> Tensor:
    """Additive causal mask as open_clip builds it (-inf above the diagonal)."""
    return torch.full((length, length), float("-inf")).triu_(1)


def text_tower_owner(model: nn.Module) -> Any:
    """The module holding the text positions: CLIP keeps them flat, CustomTextCLIP in .text.

    Typed Any because open_clip's two layouts share attribute names, not a base class.
    """
    text = getattr(model, "text", None)
    if text is None:
        if not hasattr(model, "positional_embedding"):
            raise TypeError(f"{type(model).__name__} has no open_clip text tower")
        return model
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None:
            raise NotImplementedError(
                "text towers with an appended CLS token (CoCa) are not supported"
            )
        return text
    raise NotImplementedError(
        f"text tower {type(text).__name__} has no positional embedding to stretch or walk "
        "(HF text towers are handled by CMPL separately)"
    )


def stretch_text_tower(model: nn.Module, keep: int = 20, factor: int = 4) -> int:
    """Stretch an open_clip model's text positions in place; returns the new context length.

    Must run after pretrained weights are loaded, since it stretches the trained positions.
    """
    owner = text_tower_owner(model)
    old = owner.positional_embedding
    assert isinstance(old, Tensor)
    new = stretch_positional_embedding(old.detach(), keep, factor)
    owner.positional_embedding = nn.Parameter(new.to(old.device), requires_grad=old.requires_grad)
    length = new.shape[0]
    if getattr(owner, "attn_mask", None) is not None:
        owner.attn_mask = causal_mask(length).to(old.device)
    owner.context_length = length
    if hasattr(owner, "num_pos"):
        owner.num_pos = length
    outer: Any = model
    if owner is not outer and hasattr(outer, "context_length"):
        outer.context_length = length
    return length


@functools.cache
def _simple_tokenizer() -> SimpleTokenizer:
    # Building the BPE tables takes about a second; they never change.
    return SimpleTokenizer()


@dataclass(frozen=True)
class TokenizedText:
    """Token rows plus which input text each row belongs to (several rows when chunked)."""

    ids: Tensor  # [rows, context_length] int64
    owner: Tensor  # [rows] int64, index into the input texts
    n_texts: int

    def to(self, device: torch.device | str) -> TokenizedText:
        return TokenizedText(self.ids.to(device), self.owner.to(device), self.n_texts)


class HFTokenAdapter:
    """A Hugging Face tokenizer seen through SimpleTokenizer's interface (encode, sot/eot ids).

    Special tokens are added per row by LongTextTokenizer, so that every chunk of a long text
    is framed as [CLS] ... [SEP] exactly like a short one.
    """

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(path))
        cls_id, sep_id, pad_id = (
            self.hf.cls_token_id,
            self.hf.sep_token_id,
            self.hf.pad_token_id,
        )
        if cls_id is None or sep_id is None or pad_id is None:
            raise ValueError(f"{path}: tokenizer lacks CLS/SEP/PAD tokens (BERT-style expected)")
        self.sot_token_id = int(cls_id)
        self.eot_token_id = int(sep_id)
        self.pad_token_id = int(pad_id)

    def encode(self, text: str) -> list[int]:
        # verbose=False: overlong texts are reported (once per batch) by LongTextTokenizer.
        ids = self.hf(text, add_special_tokens=False, verbose=False)["input_ids"]
        return [int(i) for i in ids]


class LongTextTokenizer:
    """Tokenisation with an explicit overflow policy.

    Works with SimpleTokenizer-style tokenizers (encode() plus sot/eot ids): CLIP's BPE, or a
    Hugging Face tokenizer through HFTokenAdapter. `pad_to_longest` pads a batch only to its
    longest row: a bidirectional tower with a padding mask gives the same result either way,
    and a 512-position tower would otherwise spend most of its compute on padding.
    """

    def __init__(
        self,
        context_length: int,
        overflow: Literal["truncate", "chunk"] = "truncate",
        max_chunks: int = 8,
        tokenizer: Any | None = None,
        pad_id: int = 0,
        pad_to_longest: bool = False,
    ) -> None:
        if context_length < 3:
            raise ValueError("context_length must hold start, end and at least one token")
        self.context_length = context_length
        self.overflow = overflow
        self.max_chunks = max_chunks
        self.pad_id = pad_id
        self.pad_to_longest = pad_to_longest
        self._tok = tokenizer if tokenizer is not None else _simple_tokenizer()

    def _rows_for(self, bpe: list[int]) -> tuple[list[list[int]], int]:
        """Token rows (without sot/eot) for one text, and how many tokens were dropped."""
        body = self.context_length - 2
        if len(bpe) <= body:
            return [bpe], 0
        if self.overflow == "truncate":
            return [bpe[:body]], len(bpe) - body
        pieces = [bpe[i : i + body] for i in range(0, len(bpe), body)]
        kept = pieces[: self.max_chunks]
        return kept, sum(len(p) for p in pieces[self.max_chunks :])

    def __call__(self, texts: Sequence[str]) -> TokenizedText:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows: list[list[int]] = []
        owner: list[int] = []
        cut_texts = 0
        cut_tokens = 0
        chunked = 0
        for i, text in enumerate(texts):
            pieces, cut = self._rows_for(self._tok.encode(text))
            if cut:
                cut_texts += 1
                cut_tokens += cut
            chunked += len(pieces) > 1
            for piece in pieces:
                rows.append([self._tok.sot_token_id, *piece, self._tok.eot_token_id])
                owner.append(i)
        if cut_tokens:
            log.warning(
                "text longer than the %d-token context: cut %d tokens from %d of %d texts "
                "(overflow=%r)",
                self.context_length,
                cut_tokens,
                cut_texts,
                len(texts),
                self.overflow,
            )
        if chunked:
            log.info("encoding %d of %d texts in chunks", chunked, len(texts))
        width = max(len(r) for r in rows) if self.pad_to_longest and rows else self.context_length
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return TokenizedText(ids, torch.tensor(owner, dtype=torch.long), len(texts))
