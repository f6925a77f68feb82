"""Which index a map searches: chosen by its size unless the user forced a kind.

The rule and its thresholds come from `benchmarks/bench_search.py` (2 shared CPU cores,
the default encoder's 256 dimensions; tables in docs/results/search_scale.md and the
README's "City scale"): exact search is exact and needs no extra memory, and up to
`EXACT_MAX` vectors it answers within `EXACT_MAX_MS` per query, well inside a dialogue
round. Above it HNSW answers two orders of magnitude faster at recall@10 >= 0.95, for a
graph of ~300 bytes a vector on top of the vectors. Above `HNSW_MAX` the graph and its
own copy of the vectors no longer fit beside the exact vectors on a robot-sized machine
(16 GB), so IVF-PQ (32-byte codes, exact re-scoring of a shortlist) takes over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlgpr_core.mapdb.index import INDEX_KINDS, IndexKind

EXACT_MAX = 200_000
"""Largest map searched exactly by default (measured: ~25 ms a query on 2 cores at 200k
would be the ceiling; 100k took ~11 ms)."""
EXACT_MAX_MS = 25
HNSW_MAX = 4_000_000
"""Largest map given HNSW by default: at 256 dimensions, vectors (1 GB a million) twice
(the exact copy and HNSW's own) plus the graph (~0.26 GB a million at M=32) reach ~9 GB
here, the most a 16 GB robot computer should give its map."""

IndexSetting = IndexKind | Literal["auto"]
SETTINGS: tuple[str, ...] = ("auto", *INDEX_KINDS)
SETTING_KEY = "search.index"
"""Map meta key holding the user's setting; absent means ``auto``."""


@dataclass(frozen=True)
class IndexChoice:
    """The index a map searches and why (printed by `dlgpr map info` and builds)."""

    kind: IndexKind
    setting: IndexSetting
    n_vectors: int

    @property
    def reason(self) -> str:
        if self.setting != "auto":
            return f"forced by the user (`dlgpr map index --kind {self.setting}`)"
        n = f"{self.n_vectors:,} vectors"
        if self.kind == "exact":
            return f"auto: {n} <= {EXACT_MAX:,}"
        if self.kind == "hnsw":
            return f"auto: {EXACT_MAX:,} < {n} <= {HNSW_MAX:,}"
        return f"auto: {n} > {HNSW_MAX:,}"

    def render(self) -> str:
        return f"search index: {self.kind} ({self.reason})"


def choose_index(n_vectors: int, setting: IndexSetting = "auto") -> IndexChoice:
    """The index kind for a map of ``n_vectors``: the user's setting, else by size."""
    if setting != "auto":
        return IndexChoice(setting, setting, n_vectors)
    if n_vectors <= EXACT_MAX:
        kind: IndexKind = "exact"
    elif n_vectors <= HNSW_MAX:
        kind = "hnsw"
    else:
        kind = "ivfpq"
    return IndexChoice(kind, "auto", n_vectors)
