"""FAISS side of a map: embeddings keyed by the SQLite image row id.

The exact index (``IndexIDMap2(IndexFlatIP)``) is the source of truth; approximate
indexes (IVF-Flat, HNSW) are derived copies for large maps and always come with a recall
figure measured against exact search, so nobody trades accuracy for speed blindly.
faiss is imported lazily so that importing the package stays cheap.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

EXACT_FILE = "embeddings.faiss"
ApproxKind = Literal["ivf", "hnsw"]
APPROX_KINDS: tuple[ApproxKind, ...] = ("ivf", "hnsw")


def approx_file(kind: ApproxKind) -> str:
    """Approximate indexes live beside the exact one, named by kind."""
    return f"embeddings.{kind}.faiss"


def faiss_module() -> Any:
    """Import faiss on first use (it pulls in BLAS/CUDA, slow to load)."""
    import faiss

    return faiss


def gpu_count() -> int:
    """faiss-cpu builds lack get_num_gpus on some versions; treat that as no GPU."""
    faiss = faiss_module()
    getter = getattr(faiss, "get_num_gpus", None)
    if getter is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(getter())
    except RuntimeError:
        return 0


_GPU_RESOURCES: list[Any] = []
GPU_MAX_K = 2048


def to_search_device(index: Any) -> Any:
    """A GPU copy for searching when a GPU is present, else the index itself.

    Index types without a GPU implementation (HNSW) make the cloner throw; they are
    searched on the CPU rather than failing.
    """
    if gpu_count() == 0:
        return index
    faiss = faiss_module()
    try:
        if not _GPU_RESOURCES:
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)
    except (RuntimeError, AttributeError):
        return index


def atomic_write_index(index: Any, path: Path) -> None:
    """Write to a temporary file, fsync, then rename over the old one.

    A crash leaves either the old or the new index, never a torn file; the directory is
    fsynced too so the rename itself survives a power cut.
    """
    faiss = faiss_module()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def as_queries(x: np.ndarray, dim: int) -> np.ndarray:
    """FAISS wants C-contiguous float32 rows."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, dim))
    return arr


class ExactIndex:
    """Brute-force inner-product search over every stored embedding, keyed by row id."""

    def __init__(self, dim: int, index: Any | None = None) -> None:
        faiss = faiss_module()
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._device_index: Any | None = None

    @classmethod
    def load(cls, path: Path, dim: int) -> ExactIndex:
        """Read an index file; raises ValueError if it is not an exact index of ``dim``."""
        faiss = faiss_module()
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise ValueError(f"{path} is not an IndexIDMap2 of dimension {dim}")
        return cls(dim, index)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return np.asarray(faiss_module().vector_to_array(self.index.id_map), dtype=np.int64)

    def vectors(self) -> np.ndarray:
        """All vectors, row-aligned with `ids`."""
        if self.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        inner = faiss_module().downcast_index(self.index.index)
        return np.asarray(inner.reconstruct_n(0, self.ntotal), dtype=np.float32)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(as_queries(vectors, self.dim), np.asarray(ids, dtype=np.int64))
        self._device_index = None

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        removed = int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))
        self._device_index = None
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._device_index is None:
            self._device_index = to_search_device(self.index)
        k = max(1, min(k, self.ntotal))
        # GPU k-selection is capped (2048 in FAISS); deeper searches run on the CPU copy.
        index = self._device_index if k <= GPU_MAX_K else self.index
        scores, ids = index.search(as_queries(queries, self.dim), k)
        return np.asarray(scores), np.asarray(ids, dtype=np.int64)

    def save(self, path: Path) -> None:
        atomic_write_index(self.index, path)


@dataclass
class ApproxReport:
    """What an approximate index costs and how much of exact search it recovers."""

    kind: ApproxKind
    n_vectors: int
    n_queries: int
    k: int
    recall_at_k: float
    """Mean |approx top-k ∩ exact top-k| / k over the queries."""
    build_seconds: float
    exact_ms_per_query: float
    approx_ms_per_query: float
    params: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0

    def render(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{self.kind} index ({params}) over {self.n_vectors} embeddings: "
            f"recall@{self.k} = {self.recall_at_k:.3f} vs exact on {self.n_queries} queries; "
            f"{self.approx_ms_per_query:.3f} ms/query (exact {self.exact_ms_per_query:.3f}); "
            f"built in {self.build_seconds:.1f} s, {self.file_bytes} bytes on disk"
        )

    __str__ = render


def build_approximate(
    vectors: np.ndarray,
    ids: np.ndarray,
    kind: ApproxKind,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
) -> tuple[Any, dict[str, int]]:
    """Build an inner-product IVF-Flat or HNSW index over ``vectors`` keyed by ``ids``.

    IVF defaults: nlist ~ 4·sqrt(n) but at most n/39 (FAISS wants >= 39 training points
    per list), nprobe = nlist/8 (at least 16); these favour recall over speed, which suits
    maps of a few hundred thousand images.
    """
    faiss = faiss_module()
    n, dim = vectors.shape
    x = as_queries(vectors, dim)
    ids = np.asarray(ids, dtype=np.int64)
    if n == 0:
        raise ValueError("cannot build an approximate index over an empty map")
    if kind == "ivf":
        lists = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        probe = min(lists, nprobe or max(16, lists // 8))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add_with_ids(x, ids)
        index.nprobe = probe
        return index, {"nlist": lists, "nprobe": probe}
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap2(hnsw)
        index.add_with_ids(x, ids)
        return index, {"M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}
    raise ValueError(f"unknown approximate index kind {kind!r}; use one of {APPROX_KINDS}")


def noisy_queries(vectors: np.ndarray, n: int, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Queries near the stored data (stored vectors plus noise, re-normalised).

    Real queries land near map images, not uniformly on the sphere, so recall measured on
    perturbed map vectors is closer to what users see than recall on random directions.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)
    q = vectors[pick] + rng.normal(scale=noise, size=(len(pick), vectors.shape[1]))
    q = q.astype(np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return np.divide(q, norms, out=np.zeros_like(q), where=norms > 0)


def recall_at_k(
    exact: ExactIndex, approx: Any, queries: np.ndarray, k: int
) -> tuple[float, float, float]:
    """Return (recall@k, exact ms/query, approx ms/query)."""
    queries = as_queries(queries, exact.dim)
    k = max(1, min(k, exact.ntotal))
    start = time.perf_counter()
    _, truth = exact.search(queries, k)
    exact_ms = (time.perf_counter() - start) * 1000 / max(1, len(queries))
    start = time.perf_counter()
    _, found = approx.search(queries, k)
    approx_ms = (time.perf_counter() - start) * 1000 / max(1, len(queries))
    hits = [
        len(set(t[t >= 0].tolist()) & set(f[f >= 0].tolist())) / k
        for t, f in zip(truth, found, strict=True)
    ]
    return float(np.mean(hits)) if hits else 0.0, exact_ms, approx_ms
