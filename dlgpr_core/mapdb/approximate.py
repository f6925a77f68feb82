"""A map's approximate indexes (IVF, HNSW): derived files, built and used only while current.

Each is built from the exact vectors with a recall figure measured against exact search
(`dlgpr_core.mapdb.index`), and stamped with the map generation it was built from; search
refuses one that predates the last map build instead of silently missing new images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dlgpr_core.mapdb.directory import BUILD_HINT, MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import (
    APPROX_KINDS,
    ApproxKind,
    ApproxReport,
    approx_file,
    atomic_write_index,
    build_approximate,
    faiss_module,
    noisy_queries,
    recall_at_k,
    to_search_device,
)
from dlgpr_core.mapdb.vectors import MapVectors

APPROX_HINT = "dlgpr map index --kind {kind}"
"""How messages tell the user to (re)build an approximate index; keep in step with the CLI."""


class ApproxIndexes:
    """Builds approximate indexes and loads them (once per generation) for search."""

    def __init__(self, map_dir: MapDirectory, vectors: MapVectors) -> None:
        self.map = map_dir
        self.vectors = vectors
        self._loaded: dict[str, tuple[str, Any]] = {}
        """kind -> (generation it was built from, index on the search device)."""

    def forget(self) -> None:
        """Drop loaded indexes; the next search reads them from disk again."""
        self._loaded.clear()

    def build(
        self,
        kind: ApproxKind,
        *,
        queries: np.ndarray | None = None,
        n_queries: int = 200,
        k: int = 10,
        noise: float = 0.05,
        **params: int,
    ) -> ApproxReport:
        """Build an IVF or HNSW index from the exact vectors and report its recall@k.

        Without ``queries``, recall is measured on ``n_queries`` stored vectors plus
        Gaussian ``noise``. ``params``: nlist, nprobe (ivf); hnsw_m, ef_construction,
        ef_search (hnsw).
        """
        if kind not in APPROX_KINDS:
            raise MapError(f"unknown index kind {kind!r}; choose one of {list(APPROX_KINDS)}")
        with self.map.writing("build an approximate index"):
            self.vectors.reload()
            self.forget()
            exact = self.vectors.exact
            if exact.ntotal == 0:
                raise MapError(
                    f"map {self.map.directory} has no images; build it with `{BUILD_HINT}`"
                )
            start = time.perf_counter()
            vectors, ids = exact.vectors(), exact.ids()
            try:
                index, used = build_approximate(vectors, ids, kind, **params)
            except TypeError as exc:
                raise MapError(f"bad parameters for a {kind} index: {exc}") from exc
            seconds = time.perf_counter() - start
            if queries is None:
                queries = noisy_queries(vectors, n_queries, noise)
            recall, exact_ms, approx_ms = recall_at_k(exact, index, queries, k)
            path = self.map.directory / approx_file(kind)
            self._save(index, path, kind, k, recall)
            return ApproxReport(
                kind=kind,
                n_vectors=len(ids),
                n_queries=len(queries),
                k=min(k, len(ids)),
                recall_at_k=recall,
                build_seconds=seconds,
                exact_ms_per_query=exact_ms,
                approx_ms_per_query=approx_ms,
                params=used,
                file_bytes=path.stat().st_size,
            )

    def _save(self, index: Any, path: Path, kind: ApproxKind, k: int, recall: float) -> None:
        """Write the file, then stamp it with the generation it was built from."""
        atomic_write_index(index, path)
        store = self.map.store
        store.begin()
        store.set_meta(f"approx.{kind}.generation", self.map.generation())
        store.set_meta(f"approx.{kind}.recall_at_{k}", f"{recall:.4f}")
        store.commit()
        self._loaded.pop(kind, None)

    def load(self, kind: ApproxKind) -> Any:
        """Load (once per map generation) an approximate index, refusing a stale one."""
        built = self.map.store.get_meta(f"approx.{kind}.generation")
        path = self.map.directory / approx_file(kind)
        hint = APPROX_HINT.format(kind=kind)
        if built is None or not path.exists():
            raise MapError(f"map {self.map.directory} has no {kind} index; build it with `{hint}`")
        if built != self.map.generation():
            raise MapError(
                f"the {kind} index of {self.map.directory} predates the last map build; "
                f"rebuild it with `{hint}` or search the exact index"
            )
        cached = self._loaded.get(kind)
        if cached is None or cached[0] != built:
            index = faiss_module().read_index(str(path))
            cached = (built, to_search_device(index))
            self._loaded[kind] = cached
        return cached[1]
