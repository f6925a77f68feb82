"""The index a map searches: chosen by size (exact, then HNSW, then IVF-PQ) unless forced.

Thresholds are lowered with monkeypatch so that maps of a few thousand vectors exercise
the rule; the real thresholds come from `benchmarks/bench_search.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_mapdb import HistogramEncoder, make_dataset

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.encoders.base import l2_normalise
from dlgpr_core.mapdb import MapDatabase, MapError, choice
from dlgpr_core.mapdb.choice import EXACT_MAX, HNSW_MAX, choose_index


def fill(db: MapDatabase, vectors: np.ndarray, start: int = 0) -> None:
    """Store synthetic vectors as images (no files), one place per 4 images."""
    rows = [
        {
            "id": None,
            "source_root": "/fake",
            "source_kind": None,
            "path": f"{i}.jpg",
            "sha256": f"{i:064x}",
            "place_id": f"p{i // 4}",
            "city": "",
            "lat": 0.0,
            "lon": 0.0,
            "heading": None,
            "date": None,
        }
        for i in range(start, start + len(vectors))
    ]
    db.writer.store_batch(rows, vectors)
    db.writer.checkpoint()


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), dim))
    return l2_normalise(centres[rng.integers(0, len(centres), n)] + 0.4 * rng.normal(size=(n, dim)))


def test_choice_rule_by_size_and_forced_kinds() -> None:
    assert EXACT_MAX < HNSW_MAX
    assert choose_index(0).kind == "exact"
    assert choose_index(EXACT_MAX).kind == "exact"
    assert choose_index(EXACT_MAX + 1).kind == "hnsw"
    assert choose_index(HNSW_MAX).kind == "hnsw"
    assert choose_index(HNSW_MAX + 1).kind == "ivfpq"
    assert choose_index(10, "hnsw").kind == "hnsw"
    assert choose_index(10**9, "exact").kind == "exact"
    assert "auto: 10 vectors <= " in choose_index(10).render()
    assert "forced by the user" in choose_index(10, "ivf").render()


def test_small_build_says_it_searches_exact(tmp_path: Path) -> None:
    enc = HistogramEncoder()
    with MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim) as db:
        report = db.build(scan_csv(make_dataset(tmp_path / "ds")), enc, progress=False)
        assert report.search_index.startswith("search index: exact (auto: 15 vectors <=")
        assert "search index: exact" in report.render()
        assert "search index: exact (auto" in db.info().render()


def test_build_over_the_threshold_builds_and_searches_the_chosen_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(choice, "EXACT_MAX", 10)
    enc = HistogramEncoder()
    with MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim) as db:
        report = db.build(scan_csv(make_dataset(tmp_path / "ds")), enc, progress=False)
        assert report.search_index.startswith("search index: hnsw (auto: 10 < 15 vectors")
        assert "hnsw index (M=32" in report.search_index  # built, with its recall
        assert "hnsw (current)" in db.info().index_types
        # The default search goes through the HNSW file: a tampered one is refused.
        (tmp_path / "map" / "embeddings.hnsw.faiss").write_bytes(
            (tmp_path / "map" / "embeddings.faiss").read_bytes()
        )
    with MapDatabase.open(tmp_path / "map") as db:
        with pytest.raises(MapError, match="refusing the hnsw index"):
            db.search(np.eye(48, dtype=np.float32)[0], None)
        assert db.search(np.eye(48, dtype=np.float32)[0], None, approximate="exact")


def test_each_kind_answers_and_a_stale_chosen_index_falls_back_to_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = clustered(1200)
    with MapDatabase.create(tmp_path / "map", "random", 32) as db:
        fill(db, vectors)
        query = vectors[321]
        monkeypatch.setattr(choice, "EXACT_MAX", 500)
        monkeypatch.setattr(choice, "HNSW_MAX", 1000)
        assert db.search_index().kind == "ivfpq"
        assert db.info().search_index.endswith("searches use exact until `dlgpr map index "
                                               "--kind auto` builds it")  # fmt: skip
        assert db.search_images(query, None, k=1)[0].image_id == 322  # exact meanwhile
        chosen = db.set_search_index("auto")
        assert (chosen.kind, chosen.setting) == ("ivfpq", "auto")
        assert "ivfpq (current)" in db.info().index_types
        hits = db.search_images(query, None, k=10)
        assert hits[0].image_id == 322 and hits[0].score == pytest.approx(1.0, abs=1e-5)
        overlap = []  # recall@10 of IVF-PQ + exact re-scoring against exact search
        for q in vectors[::60]:
            found = {h.image_id for h in db.search_images(q, None, k=10)}
            exact = {h.image_id for h in db.search_images(q, None, k=10, approximate="exact")}
            overlap.append(len(found & exact) / 10)
        assert np.mean(overlap) > 0.9
        for kind in ("exact", "ivf", "hnsw"):
            assert db.set_search_index(kind).render().startswith(f"search index: {kind} (forced")
            assert db.search_images(query, None, k=1)[0].image_id == 322
        db.set_search_index("hnsw")
        fill(db, clustered(4, seed=9), start=1200)  # a build the index predates
        assert "hnsw index is stale" in db.info().search_index
        assert db.search_images(query, None, k=1)[0].image_id == 322  # exact, no refusal
        with pytest.raises(MapError, match="predates the last map build"):
            db.search_images(query, None, approximate="hnsw")
        with pytest.raises(MapError, match="unknown index kind 'flat'"):
            db.set_search_index("flat")  # type: ignore[arg-type]


def test_single_queries_search_on_one_faiss_thread_batches_on_all() -> None:
    """On shared cores FAISS's threads wait for each other on a single query (measured 100x
    slower at 10k vectors); the per-thread setting leaves other threads' builds alone."""
    import threading

    from dlgpr_core.mapdb.index import faiss_module, search_threads

    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    seen: list[int] = []
    with search_threads(1):
        seen.append(faiss.omp_get_max_threads())
        other = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
        other.start()
        other.join()
    with search_threads(500):
        seen.append(faiss.omp_get_max_threads())
    assert seen == [1, before, before] and faiss.omp_get_max_threads() == before
