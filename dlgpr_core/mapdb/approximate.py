"""A map's approximate indexes (IVF, HNSW, IVF-PQ): derived files, used only while current.

Each is built from the exact vectors with a recall figure measured against exact search
(`dlgpr_core.mapdb.index`), and stamped with the map generation it was built from and the
number of vectors it holds; search refuses one that predates the last map build instead of
silently missing new images, and one whose file is not the index the map recorded (class,
dimension, metric, size; see `check_index`).

Which index a search uses by default follows `dlgpr_core.mapdb.choice`: by map size, or
the kind the user forced. A chosen approximate index that is missing or stale is not
used: search falls back to exact (correct, slower) and `dlgpr map info` says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dlgpr_core.mapdb.choice import SETTING_KEY, SETTINGS, IndexChoice, IndexSetting, choose_index
from dlgpr_core.mapdb.directory import BUILD_HINT, MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import (
    APPROX_KINDS,
    ApproxKind,
    ApproxReport,
    RefinedIndex,
    approx_file,
    atomic_write_index,
    build_approximate,
    check_index,
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
            searched = RefinedIndex(index, exact) if kind == "ivfpq" else index
            recall, exact_ms, approx_ms = recall_at_k(exact, searched, queries, k)
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
        store.set_meta(f"approx.{kind}.ntotal", str(int(index.ntotal)))
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
            index = self._read_checked(kind, path, hint)
            searched = to_search_device(index)
            if kind == "ivfpq":
                searched = RefinedIndex(searched, self.vectors.exact)
            cached = (built, searched)
            self._loaded[kind] = cached
        return cached[1]

    def _read_checked(self, kind: ApproxKind, path: Path, hint: str) -> Any:
        """Read an index file and refuse it unless it is the index the map recorded."""
        recorded = self.map.store.get_meta(f"approx.{kind}.ntotal")
        ntotal = int(recorded) if recorded is not None else self.vectors.exact.ntotal
        try:
            index = faiss_module().read_index(str(path))
            check_index(index, kind, self.map.dim, ntotal, path)
        except (RuntimeError, ValueError) as exc:
            raise MapError(
                f"refusing the {kind} index of {self.map.directory}: {exc}; delete "
                f"{path.name} and rebuild it with `{hint}`, or search the exact index"
            ) from exc
        return index

    # -- which index searches by default ------------------------------------------------
    def setting(self) -> IndexSetting:
        """The user's setting (``auto`` unless `set_setting` forced a kind)."""
        value = self.map.store.get_meta(SETTING_KEY) or "auto"
        if value not in SETTINGS:
            raise MapError(
                f"map {self.map.directory} records search index {value!r}; set one of "
                f"{list(SETTINGS)} with `dlgpr map index --kind`"
            )
        return value  # type: ignore[return-value]

    def set_setting(self, setting: IndexSetting) -> None:
        """Force an index kind for every search of this map, or ``auto`` (by size)."""
        if setting not in SETTINGS:
            raise MapError(f"unknown index kind {setting!r}; choose one of {list(SETTINGS)}")
        self.map.require_writable("set the search index")
        with self.map.lock:
            store = self.map.store
            store.begin()
            if setting == "auto":
                store.delete_meta(SETTING_KEY)
            else:
                store.set_meta(SETTING_KEY, setting)
            store.commit()

    def choice(self) -> IndexChoice:
        """The kind this map searches by default and why."""
        return choose_index(self.vectors.exact.ntotal, self.setting())

    def state(self, kind: ApproxKind) -> str:
        """``current``, ``stale`` or ``missing``: whether ``kind`` can answer searches."""
        built = self.map.store.get_meta(f"approx.{kind}.generation")
        if built is None or not (self.map.directory / approx_file(kind)).exists():
            return "missing"
        return "current" if built == self.map.generation() else "stale"

    def kind_for_search(self) -> ApproxKind | None:
        """The approximate index a default search uses; None: exact (chosen, or the chosen
        approximate index is missing or stale, see `state`)."""
        kind = self.choice().kind
        if kind == "exact" or self.state(kind) != "current":
            return None
        return kind

    def ensure_chosen(self) -> ApproxReport | None:
        """Build the chosen approximate index if it is missing or stale (after a build)."""
        kind = self.choice().kind
        if kind == "exact" or self.state(kind) == "current":
            return None
        return self.build(kind)
