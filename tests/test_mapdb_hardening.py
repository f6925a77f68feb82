"""Maps as robots use them: mounted read-only, started from another directory, and read
from files that may have been tampered with (issue 13, findings 6, 7 and 12)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_mapdb import COLOURS, HistogramEncoder, make_dataset, noisy_image

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.mapdb import MapDatabase, MapError
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.mapdb.lexical import LexicalSpec


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file of the directory with its content hash and modification time."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
    }


def set_writable(directory: Path, writable: bool) -> None:
    """chmod a-w (or u+w back) the map directory and its files."""
    for path in [*directory.iterdir(), directory]:
        mode = path.stat().st_mode
        if writable:
            path.chmod(mode | stat.S_IWUSR)
        else:
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def built_map(tmp_path: Path) -> Iterator[Path]:
    enc = HistogramEncoder()
    with MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim) as db:
        db.build(scan_csv(make_dataset(tmp_path / "ds")), enc, progress=False)
        db.put_evidence("test", "1", [(1, [EvidenceItem("a red facade", 0.9)])])
    yield tmp_path / "map"
    set_writable(tmp_path / "map", True)  # so pytest can clean up


def test_read_only_map_searches_and_reports_without_writing(built_map: Path) -> None:
    """Finding 6: a map with no write permission (as on a read-only mount) opens, searches
    and reports, and not one byte or file of it changes, not even while it is open."""
    before = snapshot(built_map)
    set_writable(built_map, False)
    enc = HistogramEncoder()
    with MapDatabase.open(built_map) as db:
        assert snapshot(built_map) == before  # no -wal, -shm or lock file while open
        assert db.search(noisy_image(COLOURS[2], seed=9), enc, k=1)[0].place_id == "p2"
        assert db.info().n_images == 15 and db.stats()["indexed"] == 15
        assert db.evidence.for_places("test", ["p0"])["p0"][0].items[0].phrase == "a red facade"
        assert snapshot(built_map) == before
        assert db.read_only
    assert snapshot(built_map) == before


def test_read_only_map_refuses_every_writing_verb_clearly(built_map: Path, tmp_path: Path) -> None:
    set_writable(built_map, False)
    before = snapshot(built_map)
    enc = HistogramEncoder()
    scan = scan_csv(make_dataset(tmp_path / "more", start=5))
    with MapDatabase.open(built_map) as db:
        attempts = {
            "build": lambda: db.build(scan, enc, progress=False),
            "build an approximate index": lambda: db.build_approximate("hnsw"),
            "store evidence": lambda: db.put_evidence("t", "1", []),
            "record the lexical setting": lambda: db.set_lexical(LexicalSpec("test")),
            "record the encoder": lambda: db.set_encoder_spec("x", None),
            "relocate a data set": lambda: db.relocate(tmp_path / "ds", tmp_path / "more"),
        }
        for action, attempt in attempts.items():
            with pytest.raises(MapError) as caught:
                attempt()
            message = str(caught.value)
            assert message.startswith(f"cannot {action}: map {built_map} is read-only"), message
            assert "has no write permission" in message and "mount it read-write" in message
            assert "not a readable map" not in message
    assert snapshot(built_map) == before


def test_read_only_flag_writes_nothing_to_a_writable_map(built_map: Path) -> None:
    """`read_only=True` (what a robot node can ask for) on a map it could write: searches
    work, nothing of the map changes, writes are refused; False insists on writing."""
    before = snapshot(built_map)
    with MapDatabase.open(built_map, read_only=True) as db:
        assert db.read_only
        assert len(db.search(np.eye(48, dtype=np.float32)[0], None, k=3)) == 3
        with pytest.raises(MapError, match="it was opened read-only"):
            db.set_lexical(None)
    after = {k: v for k, v in snapshot(built_map).items() if not k.startswith("map.sqlite-")}
    assert after == before  # SQLite may add its side files in a writable directory
    with MapDatabase.open(built_map, read_only=False) as db:
        assert not db.read_only
    set_writable(built_map, False)
    with pytest.raises(MapError, match=r"is read-only here .*has no write permission"):
        MapDatabase.open(built_map, read_only=False)


def test_read_only_map_predating_the_evidence_tables_reads_them_empty(built_map: Path) -> None:
    """Schema-2 maps built before the evidence tables existed get them added when opened
    writable; read-only, they read as empty instead of failing."""
    with sqlite3.connect(built_map / "map.sqlite") as conn:
        conn.executescript("DROP TABLE evidence; DROP TABLE evidence_runs;")
    conn.close()
    set_writable(built_map, False)
    with MapDatabase.open(built_map) as db:
        assert db.read_only and db.evidence.runs() == []
        assert "evidence:   none" in db.info().render()


def test_read_only_map_with_an_unreplayable_log_is_refused_with_the_way_out(
    built_map: Path,
) -> None:
    """A map copied while a writer held it has its last commits in ``-wal``; without the
    log's index a read-only directory cannot replay them: refuse rather than serve stale
    rows."""
    holder = sqlite3.connect(built_map / "map.sqlite")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("INSERT INTO meta VALUES ('late', 'commit')")
    holder.commit()
    wal = (built_map / "map.sqlite-wal").read_bytes()
    holder.close()  # checkpoints and removes the log; put the copied log back
    (built_map / "map.sqlite-wal").write_bytes(wal)
    set_writable(built_map, False)
    with pytest.raises(MapError, match=r"cannot replay.*open it once where it is writable"):
        MapDatabase.open(built_map)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_map_names_the_permission_problem(built_map: Path) -> None:
    (built_map / "map.sqlite").chmod(0)
    with pytest.raises(MapError, match="permission denied reading the map") as caught:
        MapDatabase.open(built_map)
    assert "not a readable map" not in str(caught.value)


def test_recorded_checkpoint_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 7: ``--checkpoint heads.safetensors`` typed in the build directory is recorded
    resolved, so a node started from elsewhere loads it; a checkpoint inside the map
    directory is recorded relative to it, so the map can move with its weights."""
    build_dir, elsewhere = tmp_path / "build", tmp_path / "elsewhere"
    (build_dir / "maps").mkdir(parents=True)
    elsewhere.mkdir()
    (build_dir / "heads.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(build_dir)
    with MapDatabase.create(build_dir / "maps" / "a", "fp", 4) as db:
        db.set_encoder_spec("dlgpr-lite", "heads.safetensors")
    monkeypatch.chdir(elsewhere)
    with MapDatabase.open(build_dir / "maps" / "a") as db:
        name, checkpoint = db.encoder_choice()
    assert name == "dlgpr-lite"
    assert checkpoint == (build_dir / "heads.safetensors").as_posix()

    monkeypatch.chdir(build_dir)
    inside = build_dir / "maps" / "b"
    with MapDatabase.create(inside, "fp", 4) as db:
        (inside / "heads.safetensors").write_bytes(b"weights")
        db.set_encoder_spec("dlgpr-lite", "maps/b/heads.safetensors")
    moved = tmp_path / "robot" / "map"
    moved.parent.mkdir()
    inside.rename(moved)
    monkeypatch.chdir(elsewhere)
    with MapDatabase.open(moved) as db:
        assert db.encoder_choice()[1] == (moved / "heads.safetensors").as_posix()
        assert db.encoder_spec()["checkpoint"] == (moved / "heads.safetensors").as_posix()


def test_old_map_with_a_relative_checkpoint_loads_from_its_build_dir_else_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "heads.safetensors").write_bytes(b"weights")
    with MapDatabase.create(tmp_path / "map", "fp", 4):
        pass
    with sqlite3.connect(tmp_path / "map" / "map.sqlite") as conn:  # as older dlgpr wrote it
        conn.execute(
            "INSERT INTO meta VALUES ('encoder.name', 'dlgpr-lite'), "
            "('encoder.checkpoint', 'heads.safetensors')"
        )
    conn.close()
    monkeypatch.chdir(build_dir)
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.encoder_choice()[1] == (build_dir / "heads.safetensors").as_posix()
    monkeypatch.chdir(tmp_path)
    with MapDatabase.open(tmp_path / "map") as db:
        with pytest.raises(MapError) as caught:
            db.encoder_choice()
        assert db.encoder_choice("dlgpr-lite", "/explicit.st")[1] == "/explicit.st"
    message = str(caught.value)
    assert "'heads.safetensors' relative to the directory the map was built from" in message
    assert "--checkpoint PATH" in message


def test_approximate_index_files_that_are_not_what_the_map_recorded_are_refused(
    tmp_path: Path,
) -> None:
    """Finding 12: an index file is checked (class, dimension, metric, size) against what
    the map recorded before it answers; before, any FAISS file was searched as-is."""
    import faiss
    from test_mapdb_index_choice import clustered, fill

    from dlgpr_core.mapdb.index import ExactIndex, atomic_write_index

    vectors = clustered(600)
    directory = tmp_path / "map"
    hnsw_file = directory / "embeddings.hnsw.faiss"
    with MapDatabase.create(directory, "random", 32) as db:
        fill(db, vectors)
        db.build_approximate("ivf")
        db.build_approximate("hnsw")
        good = hnsw_file.read_bytes()

    def hnsw_of(x: np.ndarray, metric: int) -> faiss.Index:
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(x.shape[1], 8, metric))
        index.add_with_ids(x, np.arange(1, len(x) + 1))
        return index

    tampered = {
        "it is a IndexIVFFlat, a hnsw index is": None,  # another kind's file
        "its vectors have 16 dimensions, the map's 32": hnsw_of(
            vectors[:, :16].copy(), faiss.METRIC_INNER_PRODUCT
        ),
        "its metric is 1, not inner product": hnsw_of(vectors, faiss.METRIC_L2),
        "it holds 100 vectors, the map recorded 600": hnsw_of(
            vectors[:100], faiss.METRIC_INNER_PRODUCT
        ),
    }
    for problem, index in tampered.items():
        if index is None:
            hnsw_file.write_bytes((directory / "embeddings.ivf.faiss").read_bytes())
        else:
            atomic_write_index(index, hnsw_file)
        with (
            MapDatabase.open(directory) as db,
            pytest.raises(MapError, match="refusing the hnsw index") as caught,
        ):
            db.search_images(vectors[0], None, approximate="hnsw")
        assert problem in str(caught.value) and "rebuild it with" in str(caught.value)
    hnsw_file.write_bytes(b"not a faiss file" * 8)
    with MapDatabase.open(directory) as db, pytest.raises(MapError, match="refusing the hnsw"):
        db.search_images(vectors[0], None, approximate="hnsw")
    hnsw_file.write_bytes(good)
    with MapDatabase.open(directory) as db:
        assert db.search_images(vectors[0], None, approximate="hnsw")[0].image_id == 1

    # The exact index (the source of truth) is checked the same way.
    flat_l2 = faiss.IndexIDMap2(faiss.IndexFlatL2(32))
    flat_l2.add_with_ids(vectors, np.arange(1, 601))
    atomic_write_index(flat_l2, directory / "embeddings.faiss")
    with pytest.raises(MapError, match=r"IndexIDMap2\(IndexFlatL2\).*delete it and run"):
        MapDatabase.open(directory)
    with pytest.raises(ValueError, match="its metric is 1, not inner product"):
        ExactIndex.load(directory / "embeddings.faiss", 32)


def test_annotation_never_reads_outside_a_stored_image_root(built_map: Path) -> None:
    """Stored paths are data from the map file: a tampered one that leaves its data set
    root is refused, not read (it used to be opened as an image)."""
    from test_mapdb_ray import ColourAnnotator

    with sqlite3.connect(built_map / "map.sqlite") as conn:
        conn.execute("UPDATE images SET path = '../../../../etc/hostname' WHERE id = 2")
    conn.close()
    with MapDatabase.open(built_map) as db:
        report = db.annotate(ColourAnnotator(), progress=False)
    assert report.annotated == 11  # 15 images: 1 refused, 3 yellow ones the fixture fails on
    escaped = [(s, r) for s, r in report.unreadable if r != "the annotator failed on it"]
    assert len(report.unreadable) == 4 and len(escaped) == 1
    assert escaped[0][0].endswith("/../../../../etc/hostname")
    assert escaped[0][1] == "path escapes dataset root"
