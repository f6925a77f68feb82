"""Cutting a text into the segments the tower CMPL reads.

A segment is a sentence (split after ``.``, ``!``, ``?`` or ``;`` followed by a space), and
a run of more than `max_words` words without such a mark (a speech transcript has none) is
cut into near-equal windows of at most `max_words` words. Every segment is encoded by MiniLM
on its own, so a description, any drop/shuffle/part of it and a dialogue's appended answers
are all bags of the same cached pieces, and MiniLM never reads more than the short inputs it
was trained on.
"""

from __future__ import annotations

import math
import re

# After ., !, ? or ;, but not after the abbreviations of sign names ("St. Peter's").
_SENTENCE_END = re.compile(r"(?<=[.!?;])(?<!St\.)(?<!Dr\.)(?<!Mr\.)(?<!Ms\.)\s+")


def split_segments(text: str, max_words: int = 16) -> list[str]:
    """The segments of `text`, in order; an empty or blank text has none."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        if not words:
            continue
        n = math.ceil(len(words) / max_words)
        size = math.ceil(len(words) / n)
        out.extend(" ".join(words[i : i + size]) for i in range(0, len(words), size))
    return out
