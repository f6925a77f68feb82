"""FAISS side of a map: embeddings keyed by the SQLite image row id.

The exact index (``IndexIDMap2(IndexFlatIP)``) is the source of truth; approximate
indexes (IVF-Flat, HNSW, IVF-PQ) are derived copies for large maps and always come with a
recall figure measured against exact search, so nobody trades accuracy for speed blindly.
faiss is imported lazily so that importing the package stays cheap.

Index files are FAISS's own binary format, read by its C++ deserialiser: no code runs from
them (unlike pickle), but the reader trusts their structure, so every loaded index is
checked against what the map records (`check_index`) before it answers a query.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

EXACT_FILE = "embeddings.faiss"
ApproxKind = Literal["ivf", "hnsw", "ivfpq"]
APPROX_KINDS: tuple[ApproxKind, ...] = ("ivf", "hnsw", "ivfpq")
IndexKind = Literal["exact", "ivf", "hnsw", "ivfpq"]
INDEX_KINDS: tuple[IndexKind, ...] = ("exact", *APPROX_KINDS)

IVFPQ_REFINE = 8
"""An IVF-PQ search ranks ``k x IVFPQ_REFINE`` candidates by their compressed codes, then
re-scores them with the exact vectors the map holds anyway (`RefinedIndex`): PQ distances
alone lose the top-10 order that recall@10 and place ranking depend on."""


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


SINGLE_QUERY_THREADS = int(os.environ.get("DLGPR_SEARCH_THREADS", "1"))
"""FAISS threads for a search of a few queries (what a robot asks): one by default.

FAISS splits even one query's exact search over all cores; on shared cores the threads
then wait for each other at every step: `benchmarks/bench_search.py` measured one thread
against two at 0.65 vs 60 ms (10k vectors), 49 vs 170 ms (100k) and 218 vs 615 ms (1M) on
2 shared cores (load ~11). Set ``DLGPR_SEARCH_THREADS`` to use more on dedicated cores.
Batches (evaluation, recall measurement) keep FAISS's threads."""
FEW_QUERIES = 8


@contextmanager
def search_threads(n_queries: int) -> Iterator[None]:
    """`SINGLE_QUERY_THREADS` for the calling thread while it searches a few queries.

    OpenMP's thread count is per calling thread, so a build running in another thread
    keeps its own.
    """
    if n_queries > FEW_QUERIES:
        yield
        return
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, min(SINGLE_QUERY_THREADS, before)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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
        check_index(index, "exact", dim, None, path)
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

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (each must be in the index)."""
        return np.asarray(self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._device_index is None:
            self._device_index = to_search_device(self.index)
        k = max(1, min(k, self.ntotal))
        # GPU k-selection is capped (2048 in FAISS); deeper searches run on the CPU copy.
        index = self._device_index if k <= GPU_MAX_K else self.index
        q = as_queries(queries, self.dim)
        with search_threads(len(q)):
            scores, ids = index.search(q, k)
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


TRAIN_PER_LIST = 39
"""IVF training points per list for large maps (FAISS's own minimum without a warning):
k-means over every vector of a million-image map takes hours on a robot's CPU."""
TRAIN_ITERATIONS = 10
"""k-means iterations on such a sample (FAISS's default is 25); nprobe absorbs the
difference, which recall@10 in the benchmark shows."""


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4·sqrt(n), but at most n/39 (FAISS wants >= 39
    training points per list)."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors: 8 dimensions each (256-dim -> 32 bytes a vector, 32x smaller than
    float32), or the largest divisor of ``dim`` not above dim/8."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


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
    pq_m: int | None = None,
    pq_bits: int | None = None,
) -> tuple[Any, dict[str, int]]:
    """Build an inner-product IVF-Flat, HNSW or IVF-PQ index over ``vectors`` keyed by ``ids``.

    IVF defaults: nlist = `ivf_lists`, nprobe = nlist/8 (at least 16); these favour recall
    over speed, which suits maps of a few hundred thousand images. IVF-PQ stores
    `pq_subquantizers` codes of ``pq_bits`` (8, fewer for maps too small to train 256
    centroids per sub-vector) per vector; it is searched through `RefinedIndex`.
    """
    faiss = faiss_module()
    n, dim = vectors.shape
    x = as_queries(vectors, dim)
    ids = np.asarray(ids, dtype=np.int64)
    if n == 0:
        raise ValueError("cannot build an approximate index over an empty map")
    if kind in ("ivf", "ivfpq"):
        lists = nlist or ivf_lists(n)
        probe = min(lists, nprobe or max(16, lists // 8))
        quantizer = faiss.IndexFlatIP(dim)
        used = {"nlist": lists, "nprobe": probe}
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            m = pq_m or pq_subquantizers(dim)
            bits = pq_bits or int(min(8, max(4, np.log2(max(16, n // 39)))))
            index = faiss.IndexIVFPQ(quantizer, dim, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
            used.update({"m": m, "nbits": bits, "refine": IVFPQ_REFINE})
        if n > TRAIN_PER_LIST * lists:  # k-means cost grows with points x lists
            pick = np.random.default_rng(0).choice(n, TRAIN_PER_LIST * lists, replace=False)
            index.cp.niter = TRAIN_ITERATIONS
            if kind == "ivfpq":
                index.pq.cp.niter = TRAIN_ITERATIONS
            index.train(x[np.sort(pick)])
        else:
            index.train(x)
        index.add_with_ids(x, ids)
        index.nprobe = probe
        return index, used
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap2(hnsw)
        index.add_with_ids(x, ids)
        return index, {"M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}
    raise ValueError(f"unknown approximate index kind {kind!r}; use one of {APPROX_KINDS}")


class RefinedIndex:
    """IVF-PQ candidates re-scored with the exact vectors: ``search`` like a FAISS index.

    The shortlist (``k x refine``) comes from the compressed codes; the returned scores are
    exact inner products, so they compare with exact search and other kinds.
    """

    def __init__(self, coarse: Any, exact: ExactIndex, refine: int = IVFPQ_REFINE) -> None:
        self.coarse = coarse
        self.exact = exact
        self.refine = refine

    @property
    def ntotal(self) -> int:
        return int(self.coarse.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_queries(queries, self.exact.dim)
        with search_threads(len(q)):
            _, cand = self.coarse.search(q, max(k, k * self.refine))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        for row, found in enumerate(np.asarray(cand, dtype=np.int64)):
            found = found[found >= 0]
            if len(found) == 0:
                continue
            exact = self.exact.reconstruct(found) @ q[row]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(order)] = exact[order]
            ids[row, : len(order)] = found[order]
        return scores, ids


INDEX_CLASSES: dict[IndexKind, tuple[str, ...]] = {
    "exact": ("IndexIDMap2", "IndexFlatIP"),
    "hnsw": ("IndexIDMap2", "IndexHNSWFlat"),
    "ivf": ("IndexIVFFlat",),
    "ivfpq": ("IndexIVFPQ",),
}
"""FAISS classes of each kind's file, outer first (an IDMap2 and the index it wraps)."""


def describe_index(index: Any) -> str:
    """``IndexIDMap2(IndexHNSWFlat)``-style name of a loaded index, for messages."""
    faiss = faiss_module()
    outer = faiss.downcast_index(index)
    inner = getattr(outer, "index", None)
    name = type(outer).__name__
    return f"{name}({type(faiss.downcast_index(inner)).__name__})" if inner is not None else name


def check_index(
    index: Any, kind: IndexKind, dim: int, ntotal: int | None, path: Path | str
) -> None:
    """Refuse an index file that is not what the map records: class, dimension, metric
    (inner product) and, where given, the number of vectors. Raises ValueError saying what
    was found and expected; callers turn it into a `MapError` with the way out."""
    faiss = faiss_module()
    outer = faiss.downcast_index(index)
    classes = [type(outer).__name__]
    inner = getattr(outer, "index", None) if isinstance(outer, faiss.IndexIDMap2) else None
    if inner is not None:
        classes.append(type(faiss.downcast_index(inner)).__name__)
    expected = INDEX_CLASSES[kind]
    problems = []
    if tuple(classes) != expected:
        problems.append(f"it is a {describe_index(index)}, a {kind} index is {expected}")
    if int(index.d) != dim:
        problems.append(f"its vectors have {index.d} dimensions, the map's {dim}")
    if int(index.metric_type) != int(faiss.METRIC_INNER_PRODUCT):
        problems.append(f"its metric is {index.metric_type}, not inner product")
    if ntotal is not None and int(index.ntotal) != ntotal:
        problems.append(f"it holds {index.ntotal} vectors, the map recorded {ntotal}")
    if problems:
        raise ValueError(f"{path} is not this map's {kind} index: " + "; ".join(problems))


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
