"""Tokenising with explicit truncation.

open_clip tokenizers cut text at the context length without a word. A place description that
loses its last sentences retrieves worse for reasons nobody can see, so every cut is counted
and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


class TruncatingTokenizer:
    """Wraps an open_clip tokenizer (HFTokenizer or SimpleTokenizer-like) and logs cuts."""

    def __init__(self, tokenizer: Any, context_length: int, *, trim_padding: bool = False) -> None:
        self._tok = tokenizer
        self.context_length = int(context_length)
        # HF towers mask padding and use absolute positions, so dropping all-pad trailing
        # columns is exact and saves most of the attention cost for short captions.
        self.trim_padding = trim_padding

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Token counts including special tokens, before any truncation."""
        hf = getattr(self._tok, "tokenizer", None)
        if hf is not None:
            clean = getattr(self._tok, "clean_fn", lambda t: t)
            enc = hf(
                [clean(t) for t in texts], add_special_tokens=True, truncation=False, verbose=False
            )
            return [len(ids) for ids in enc["input_ids"]]
        if hasattr(self._tok, "encode"):
            # SimpleTokenizer adds start and end tokens around the BPE ids.
            return [len(self._tok.encode(t)) + 2 for t in texts]
        raise TypeError(f"cannot count tokens with {type(self._tok).__name__}")

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        counts = self.token_counts(texts)
        over = [(i, n) for i, n in enumerate(counts) if n > self.context_length]
        if over:
            cut = sum(n - self.context_length for _, n in over)
            worst = max(n for _, n in over)
            log.warning(
                "truncated %d of %d texts to the context length of %d tokens: %d tokens cut "
                "in total (longest text had %d tokens)",
                len(over),
                len(texts),
                self.context_length,
                cut,
                worst,
            )
        ids = self._tok(texts, context_length=self.context_length)
        if self.trim_padding and ids.shape[1] > 0:
            longest = min(max(counts, default=1), self.context_length)
            ids = ids[:, :longest]
        return ids
