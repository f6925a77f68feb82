"""Which index a map searches: chosen by its size unless the user forced a kind.

The rule and its thresholds come from `benchmarks/bench_search.py` (docs/results/
search_scale.md, the README's "City scale": 2 shared CPU cores, the default encoder's 256
dimensions, one query at a time). Exact search is exact and costs no memory beyond the
vectors the map holds anyway; it answered in 0.65 ms at 10k vectors and 49 ms at 100k, but
218 ms at 1M, past a dialogue round. HNSW answered in 0.11 ms at 100k (recall@10 1.000) and
0.23 ms at 1M (0.969), and builds in about a minute per 100k vectors (845 s at 1M), little
next to encoding the images (~70 min per 100k at 24 images/s). It costs 1,304 bytes a vector
on top of the exact index's 1,032 (it keeps its own copy of the vectors), so above
`HNSW_MAX` (~9 GB for both) IVF-PQ takes over: 44 bytes a vector, 7.6 ms a query and
recall@10 0.915 at 1M with exact re-scoring of its shortlist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dlgpr_core.mapdb.index import INDEX_KINDS, IndexKind

EXACT_MAX = 100_000
"""Largest map searched exactly by default: 49 ms a query at 100k on 2 busy cores (18 ms
on quieter ones), linear in size beyond."""
HNSW_MAX = 4_000_000
"""Largest map given HNSW by default: exact vectors plus HNSW take ~2.3 KB a vector, ~9 GB
at 4M, the most a 16 GB robot computer should give its map."""

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
