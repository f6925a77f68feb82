"""Finding vocabulary terms in free text: plurals, longest phrase first, no double counting.

A plain text utility shared by whoever maps words to categories and values (the robot's
answer reading, the evaluation rephraser's checks); the lexicons themselves live with their
owners, so the robot's words and the evaluation's words stay separate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache


def _plural_pattern(phrase: str) -> str:
    body = r"\s+".join(re.escape(w) for w in phrase.lower().split())
    return rf"(?<![\w-]){body}(?:s|es)?(?![\w-])"


@cache
def _compiled(items: tuple[tuple[str, str], ...]) -> list[tuple[str, re.Pattern[str]]]:
    # Longest phrase first, so "light blue" is taken before "blue" and "post office"
    # before any shorter overlap.
    ordered = sorted(items, key=lambda kv: -len(kv[1]))
    return [(key, re.compile(_plural_pattern(phrase))) for key, phrase in ordered]


def find_terms(text: str, lexicon: Mapping[str, Iterable[str]]) -> set[str]:
    """Keys of ``lexicon`` whose phrases occur in ``text`` (case-insensitive, plurals too).

    Longer phrases are matched and blanked out first, so a phrase is never also counted
    as the shorter one it contains (``light blue`` is not ``blue``).
    """
    items = tuple((k, p) for k, phrases in lexicon.items() for p in phrases)
    masked = text.lower()
    found: set[str] = set()
    for key, pattern in _compiled(items):
        if pattern.search(masked):
            found.add(key)
            masked = pattern.sub(lambda m: " " * len(m.group(0)), masked)
    return found
