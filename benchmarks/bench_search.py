"""Search at city scale: exact, HNSW and IVF-PQ at 10k, 100k and 1M vectors, in one run.

For each size: build time, memory (resident-set growth while the index is built and held),
single-query latency and queries/s (one query at a time, as a robot asks), and recall@10
against exact search, for the three index kinds a map chooses between
(`dlgpr_core.mapdb.choice`), built with the map's own code and defaults
(`dlgpr_core.mapdb.index.build_approximate`, IVF-PQ searched through `RefinedIndex`).

The vectors are synthetic, at the default encoder's width (256): unit vectors with the
structure of a street-view map (street archetypes, places, 4 views a place) in a 64-dim
subspace plus noise, so that neighbours exist and approximate recall means something.
Queries are stored vectors with noise (what a description close to a place looks like).
They are generated in chunks of 50k rows straight into one float32 array.

Run (about 25 minutes on 2 cores, most of it building HNSW over 1M vectors):
``python benchmarks/bench_search.py --out docs/results/search_scale``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from dlgpr_core.mapdb.choice import EXACT_MAX, HNSW_MAX, choose_index
from dlgpr_core.mapdb.index import (
    ExactIndex,
    RefinedIndex,
    atomic_write_index,
    build_approximate,
    faiss_module,
)

DIM = 256
"""The default encoder's (dlgpr-lite) embedding width."""
LATENT = 64
GROUPS = 256
VIEWS = 4
CHUNK = 50_000
K = 10


def generate(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: archetype -> place -> view in a LATENT-dim subspace, plus noise."""
    setup = np.random.default_rng(seed)
    basis = np.linalg.qr(setup.normal(size=(DIM, LATENT)))[0].T.astype(np.float32)
    archetypes = setup.normal(size=(GROUPS, LATENT)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for c, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, c])
        m = min(CHUNK, n - start)
        places = -(-m // VIEWS)
        centre = archetypes[rng.integers(0, GROUPS, places)]
        centre = centre + 0.6 * rng.normal(size=centre.shape).astype(np.float32)
        views = np.repeat(centre, VIEWS, axis=0)[:m]
        views = views + 0.25 * rng.normal(size=views.shape).astype(np.float32)
        x = views @ basis + 0.02 * rng.normal(size=(m, DIM)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_queries(vectors: np.ndarray, n: int, noise: float = 0.3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), size=n, replace=False)]
    direction = rng.normal(size=picked.shape).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    q = picked + noise * direction
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def latencies(search: Callable[[np.ndarray, int], Any], queries: np.ndarray) -> list[float]:
    """Milliseconds per single-query search, after two warm-up queries."""
    for q in queries[:2]:
        search(q[None, :], K)
    out = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :], K)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def top_ids(search: Callable[[np.ndarray, int], Any], queries: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(search(q[None, :], K)[1])[0] for q in queries])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / K


def file_bytes(index: Any) -> int:
    """Size of the index as the map writes it (and reads it back into memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        atomic_write_index(index, path)
        return path.stat().st_size


def row(
    kind: str, n: int, build_s: float, size: int, mem: int, lat: list[float], rec: float
) -> dict:
    mean = statistics.fmean(lat)
    return {
        "kind": kind,
        "n": n,
        "build_s": round(build_s, 2),
        "file_mib": round(size / 2**20, 1),
        "bytes_per_vector": round(size / n, 1),
        "rss_growth_mib": round(mem / 2**20, 1),
        "p50_ms": round(statistics.median(lat), 3),
        "p95_ms": round(float(np.percentile(lat, 95)), 3),
        "queries_per_s": round(1e3 / mean, 1),
        "recall_at_10": round(rec, 4),
    }


def querying(threads: int) -> Any:
    """FAISS threads while queries run (builds use all of them)."""
    faiss = faiss_module()

    class Threads:
        def __enter__(self) -> None:
            self.before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)

        def __exit__(self, *exc: object) -> None:
            faiss.omp_set_num_threads(self.before)

    return Threads()


def bench_size(n: int, n_queries: int, kinds: list[str], threads: int) -> list[dict]:
    print(f"-- {n:,} vectors", flush=True)
    vectors = generate(n)
    ids = np.arange(1, n + 1, dtype=np.int64)
    queries = make_queries(vectors, n_queries)
    rows = []

    base = rss()
    start = time.perf_counter()
    exact = ExactIndex(DIM)
    for s in range(0, n, CHUNK):
        exact.add(vectors[s : s + CHUNK], ids[s : s + CHUNK])
    exact_build = time.perf_counter() - start
    exact_mem = rss() - base
    with querying(threads):
        lat = latencies(exact.search, queries)
        truth = top_ids(exact.search, queries)
    exact_size = file_bytes(exact.index)
    rows.append(row("exact", n, exact_build, exact_size, exact_mem, lat, 1.0))
    print(rows[-1], flush=True)
    all_threads = faiss_module().omp_get_max_threads()
    if all_threads != threads:  # what FAISS's default threading costs a single query here
        lat = latencies(exact.index.search, queries[: max(20, n_queries // 4)])  # raw FAISS
        label = f"exact ({all_threads} threads)"
        rows.append(row(label, n, exact_build, exact_size, exact_mem, lat, 1.0))
        print(rows[-1], flush=True)

    for kind in kinds:
        base = rss()
        start = time.perf_counter()
        index, params = build_approximate(vectors, ids, kind)  # type: ignore[arg-type]
        build_s = time.perf_counter() - start
        mem = rss() - base
        searcher: Any = RefinedIndex(index, exact) if kind == "ivfpq" else index
        with querying(threads):
            lat = latencies(searcher.search, queries)
            rec = recall(top_ids(searcher.search, queries), truth)
        result = row(kind, n, build_s, file_bytes(index), mem, lat, rec)
        result["params"] = params
        rows.append(result)
        print(rows[-1], flush=True)
        del index, searcher
    del exact, vectors
    gc.collect()
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Search at city scale: exact, HNSW, IVF-PQ",
        "",
        f"`{result['command']}`, {result['date']}, {result['machine']}; "
        f"{result['dim']}-dim synthetic map vectors (archetype -> place -> 4 views), "
        f"{result['queries']} single-vector queries on {result['query_threads']} FAISS "
        f"thread(s), builds on {result['threads']}; FAISS {result['faiss']}. One run; load "
        f"average {result['load_average'][0]} at the start, {result['load_average'][1]} at "
        "the end (other developers' jobs share the cores).",
        "",
        "| vectors | index | build (s) | index MiB | bytes/vector | RSS growth MiB | p50 ms "
        "| p95 ms | queries/s | recall@10 vs exact |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['n']:,} | {r['kind']} | {r['build_s']} | {r['file_mib']} | "
            f"{r['bytes_per_vector']} | {r['rss_growth_mib']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['queries_per_s']} | {r['recall_at_10']:.3f} |"
        )
    params = {r["kind"]: r["params"] for r in result["rows"] if "params" in r}
    lines += [
        "",
        "Parameters (the map's defaults): "
        + "; ".join(
            f"{k}: {', '.join(f'{a}={b}' for a, b in v.items())}" for k, v in params.items()
        ),
        "",
        "Index MiB: the index as the map writes it and loads it into memory (vectors, ids, "
        "graph or codes); RSS growth: the process's resident set after building it (noisy: "
        "allocator and build buffers). IVF-PQ's re-scoring reads the exact index's vectors, "
        "which the map holds anyway, so its memory adds to exact's rather than replacing it.",
        "",
        f"Choice rule (`dlgpr_core/mapdb/choice.py`): exact up to {EXACT_MAX:,} vectors, "
        f"HNSW up to {HNSW_MAX:,}, IVF-PQ above; by size: "
        + ", ".join(f"{n:,} -> {choose_index(n).kind}" for n in result["sizes"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="hnsw,ivfpq")
    parser.add_argument(
        "--query-threads",
        type=int,
        default=1,
        help="FAISS threads for the single-query timings (builds use all cores): on shared "
        "cores one thread answers a single query faster than two waiting for each other.",
    )
    parser.add_argument("--out", type=Path, help="Write OUT.json and OUT.md.")
    parser.add_argument(
        "--render", type=Path, help="Only re-write the Markdown of this JSON (no measuring)."
    )
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    faiss = faiss_module()
    load_before = os.getloadavg()[0]
    rows = [r for n in sizes for r in bench_size(n, args.queries, kinds, args.query_threads)]
    result = {
        "command": "python benchmarks/bench_search.py "
        + f"--sizes {args.sizes} --queries {args.queries} --kinds {args.kinds} "
        + f"--query-threads {args.query_threads}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "query_threads": args.query_threads,
        "machine": f"{os.cpu_count()} shared CPU cores ({platform.machine()})",
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "dim": DIM,
        "queries": args.queries,
        "sizes": sizes,
        "rows": rows,
    }
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
