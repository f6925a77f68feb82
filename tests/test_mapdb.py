"""Map database: build, search, resume, incremental add, bad input, refusals, approx indexes.

`HistogramEncoder` below is a PLUMBING FIXTURE, not a result: a colour histogram for
images and a hashed bag of words for texts, deterministic and dependency-free, so these
tests exercise storage and bookkeeping, never retrieval quality.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.data.records import DatasetScan, ImageRecord
from dlgpr_core.encoders.base import Encoder, l2_normalise
from dlgpr_core.mapdb import MapDatabase, MapError
from dlgpr_core.mapdb.index import EXACT_FILE, ExactIndex

COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230)]


class HistogramEncoder:
    """Plumbing fixture (see module docstring); counts the images it encodes."""

    def __init__(self, fail_after_batches: int | None = None, fingerprint: str = "test-hist-v1"):
        self._fingerprint = fingerprint
        self.fail_after_batches = fail_after_batches
        self.batches = 0
        self.images_encoded = 0

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return 48

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
            raise RuntimeError("simulated crash inside the encoder")
        self.batches += 1
        self.images_encoded += len(images)
        rows = []
        for img in images:
            pixels = np.asarray(img.convert("RGB").resize((16, 16)))
            hist = [np.histogram(pixels[..., c], bins=16, range=(0, 256))[0] for c in range(3)]
            rows.append(np.concatenate(hist).astype(np.float32))
        return l2_normalise(np.stack(rows))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return l2_normalise(out)


def noisy_image(colour: tuple[int, int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 6, size=(24, 24, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_dataset(
    root: Path, places: int = 5, per_place: int = 3, start: int = 0, seed: int = 0
) -> Path:
    """Write ``places`` x ``per_place`` PNGs and a CSV listing them; returns the CSV.

    ``seed`` changes the pixels, so two data sets can share file names, not content."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["image,place_id,lat,lon,heading"]
    for p in range(places):
        for j in range(start, start + per_place):
            name = f"img/p{p}_{j}.png"
            noisy_image(COLOURS[p], seed=seed + 100 * p + j).save(root / name)
            lines.append(f"{name},p{p},{40 + p * 0.01},{-70 - j * 1e-5},{j * 90 % 360}")
    csv_path = root / "map.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def new_map(tmp_path: Path, encoder: Encoder) -> MapDatabase:
    return MapDatabase.create(tmp_path / "map", encoder.fingerprint, encoder.dim)


def built_map(tmp_path: Path, places: int) -> MapDatabase:
    """A `HistogramEncoder` map of `make_dataset`'s `places` x 3 images (ids 1, 2, ...)."""
    enc = HistogramEncoder()
    db = new_map(tmp_path, enc)
    db.build(scan_csv(make_dataset(tmp_path / "ds", places=places)), enc, progress=False)
    return db


def test_encoder_fixture_satisfies_protocol() -> None:
    assert isinstance(HistogramEncoder(), Encoder)


def test_build_then_image_query_ranks_right_place_first(tmp_path: Path, dataset: Path) -> None:
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        report = db.build(scan_csv(dataset), enc, batch_size=4, progress=False)
        assert (report.added, report.already_present, report.skipped) == (15, 0, [])
        assert "added 15 images" in report.render()
        hits = db.search(noisy_image(COLOURS[2], seed=999), enc, k=3)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].place_id == "p2"
        assert len({h.place_id for h in hits}) == 3
        assert hits[0].score >= hits[1].score >= hits[2].score
        assert hits[0].image_path.endswith(".png") and hits[0].image_path.startswith("img/p2_")
        assert hits[0].image_root == (tmp_path / "ds").resolve().as_posix()
        assert hits[0].resolve() == (tmp_path / "ds" / hits[0].image_path).resolve()
        assert hits[0].resolve(Path("/robot/ds")) == Path("/robot/ds") / hits[0].image_path
        assert hits[0].lat == pytest.approx(40.02)
        images = db.search_images(noisy_image(COLOURS[2], seed=999), enc, k=3)
        assert [h.place_id for h in images] == ["p2"] * 3
        assert all(h.resolve().is_file() and not Path(h.path).is_absolute() for h in images)
        assert db.search("red building", enc, k=5)  # text path runs end to end
        info = db.info()
        assert (info.n_places, info.n_images, info.n_indexed, info.n_pending) == (5, 15, 15, 0)
        assert info.bytes_per_embedding["raw vector"] == 48 * 4
        assert "test-hist-v1" in info.render()
        assert db.encoder_spec() == {}
        db.set_encoder_spec("hist", "/ckpt.pt")
        assert db.encoder_spec() == {"name": "hist", "checkpoint": "/ckpt.pt"}


def test_resume_after_interruption_does_not_re_encode(tmp_path: Path, dataset: Path) -> None:
    crashing = HistogramEncoder(fail_after_batches=2)
    with (
        new_map(tmp_path, crashing) as db,
        pytest.raises(RuntimeError, match="simulated crash"),
    ):
        db.build(scan_csv(dataset), crashing, batch_size=4, progress=False)
    enc = HistogramEncoder()
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.stats()["images"] == 8
        report = db.build(scan_csv(dataset), enc, batch_size=4, progress=False)
    assert enc.images_encoded == 7
    assert (report.added, report.already_present) == (7, 8)


def test_incremental_build_adds_only_new_images(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_dataset(root, per_place=2)
    first = scan_csv(root / "map.csv")
    make_dataset(root, per_place=2, start=2)  # rewrites the CSV with 2 new images per place
    both = DatasetScan(root=root, records=first.records + scan_csv(root / "map.csv").records)
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        db.build(first, enc, progress=False)
        assert enc.images_encoded == 10
        report = db.build(both, enc, progress=False)
        assert (report.added, report.already_present, enc.images_encoded) == (10, 10, 20)
        assert db.stats() == {"places": 5, "images": 20, "indexed": 20, "pending": 0, "skipped": 0}


def test_bad_inputs_are_skipped_with_reasons_and_build_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    csv_path = make_dataset(root, places=2, per_place=2)
    (root / "img" / "corrupt.png").write_bytes(b"this is not an image at all")
    good = (root / "img" / "p0_0.png").read_bytes()
    buf = root / "img" / "big.jpg"
    noisy_image((90, 90, 90), seed=5).resize((200, 200)).save(buf, quality=95)
    (root / "img" / "truncated.jpg").write_bytes(buf.read_bytes()[:-2000])
    buf.unlink()
    (root / "img" / "copy.png").write_bytes(good)
    outside = tmp_path / "outside.png"
    noisy_image((1, 2, 3), seed=1).save(outside)
    (root / "img" / "link.png").symlink_to(outside)
    with csv_path.open("a") as handle:
        handle.write("img/corrupt.png,p9,1,1,\n")
        handle.write("img/truncated.jpg,p9,1,1,\n")
        handle.write("img/copy.png,p9,1,1,\n")
        handle.write("img/p0_0.png,p0,40,-70,\n")  # same path twice
        handle.write("img/p1_0.png,p1,north,-70,\n")
        handle.write("img/p1_0.png,p1,40\n")
        handle.write("../outside.png,p9,1,1,\n")
        handle.write(f"{outside},p9,1,1,\n")
        handle.write("img/link.png,p9,1,1,\n")
    scan = scan_csv(csv_path)
    # Readers already refuse escapes; records built by other readers are checked again.
    for rel in ("../outside.png", str(outside), "img/link.png"):
        scan.records.append(ImageRecord(path=rel, place_id="x", lat=0, lon=0))
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        report = db.build(scan, enc, batch_size=3, progress=False)
        assert report.added == 4
        reasons = [(s.source, s.reason) for s in report.skipped]

        def reason_of(fragment: str) -> list[str]:
            return [r for s, r in reasons if fragment in s]

        assert reason_of("corrupt.png")[0].startswith("corrupt image:")
        assert reason_of("truncated.jpg")[0].startswith("corrupt image:")
        assert reason_of("copy.png")[0].startswith("duplicate image: same content as")
        assert reason_of("p0_0.png") == ["duplicate path: listed twice in the data set"]
        assert "'lat' is not a number" in reason_of("map.csv:10")[0]
        assert "missing value for column 'lon'" in reason_of("map.csv:11")[0]
        escapes = [s for s, r in reasons if r == "path escapes dataset root"]
        assert len(escapes) == 6  # three from the reader, three from the builder
        assert db.stats()["skipped"] == len(report.skipped)
        assert {s.source for s in db.skipped()} == {s for s, _ in reasons}

        # a duplicate of an image stored by an earlier build is refused too
        (root / "img" / "later_copy.png").write_bytes(good)
        later = DatasetScan(root=root, records=[ImageRecord("img/later_copy.png", "p0", 40, -70)])
        again = db.build(later, enc, progress=False)
        assert again.added == 0
        assert again.skipped[0].reason.startswith("duplicate image: same content as")
        assert again.skipped[0].reason.endswith("img/p0_0.png")


def test_failing_build_loses_nothing_stored_before(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_dataset(root, per_place=2)
    first = scan_csv(root / "map.csv")
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        db.build(first, enc, progress=False)
        before = db.search(noisy_image(COLOURS[1], seed=7), enc, k=5)
    make_dataset(root, per_place=2, start=2)
    crashing = HistogramEncoder(fail_after_batches=0)
    with (
        MapDatabase.open(tmp_path / "map") as db,
        pytest.raises(RuntimeError, match="simulated crash"),
    ):
        db.build(scan_csv(root / "map.csv"), crashing, batch_size=2, progress=False)
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.stats()["images"] == 10 and db.stats()["indexed"] == 10
        assert db.search(noisy_image(COLOURS[1], seed=7), enc, k=5) == before


def test_index_and_rows_reconcile_after_crash_between_save_and_commit(
    tmp_path: Path, dataset: Path
) -> None:
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        db.build(scan_csv(dataset), enc, progress=False)
    # as if the index had been saved with rows 16..17 whose transaction never committed
    exact = ExactIndex.load(tmp_path / "map" / EXACT_FILE, 48)
    exact.add(np.ones((2, 48), dtype=np.float32) / np.sqrt(48), np.array([16, 17]))
    exact.save(tmp_path / "map" / EXACT_FILE)
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.stats()["indexed"] == 15
        extra = make_dataset(tmp_path / "ds2", places=1, per_place=2, start=50)
        db.build(scan_csv(extra), enc, progress=False)  # reuses ids 16, 17
    with MapDatabase.open(tmp_path / "map") as db:
        ids = ExactIndex.load(tmp_path / "map" / EXACT_FILE, 48).ids()
        assert sorted(ids.tolist()) == list(range(1, 18))
        assert db.search_images(noisy_image(COLOURS[0], seed=1), enc, k=17)[-1].rank == 17


def test_lost_index_file_is_re_encoded_by_next_build(tmp_path: Path, dataset: Path) -> None:
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        db.build(scan_csv(dataset), enc, progress=False)
    (tmp_path / "map" / EXACT_FILE).unlink()
    enc = HistogramEncoder()
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.stats()["pending"] == 15
        with pytest.raises(MapError, match="none is indexed"):
            db.search("red", enc)
        report = db.build(scan_csv(dataset), enc, progress=False)
        assert (report.reencoded, report.added, enc.images_encoded) == (15, 0, 15)
        assert db.search(noisy_image(COLOURS[4], seed=1), enc)[0].place_id == "p4"


def test_refusals(tmp_path: Path, dataset: Path) -> None:
    enc = HistogramEncoder()
    with pytest.raises(MapError, match="no map directory"):
        MapDatabase.open(tmp_path / "nowhere")
    with new_map(tmp_path, enc) as db:
        with pytest.raises(MapError, match=r"has no images; build it with `dlgpr map build`"):
            db.search("anything", enc)
        db.build(scan_csv(dataset), enc, progress=False)
        other = HistogramEncoder(fingerprint="other-encoder")
        with pytest.raises(
            MapError, match="built with test-hist-v1, query encoder is other-encoder; rebuild"
        ):
            db.search("anything", other)
        with pytest.raises(MapError, match="built with test-hist-v1"):
            db.build(scan_csv(dataset), other, progress=False)
        with pytest.raises(MapError, match="needs one 48-dim vector"):
            db.search(np.ones(12, dtype=np.float32), None)
        with pytest.raises(MapError, match="needs an encoder"):
            db.search("red", None)
        with pytest.raises(MapError, match="has no ivf index"):
            db.search("red", enc, approximate="ivf")
    with pytest.raises(MapError, match="already exists"):
        new_map(tmp_path, enc)
    shutil.rmtree(tmp_path / "map")
    (tmp_path / "map").mkdir()
    with pytest.raises(MapError, match="holds no map"):
        MapDatabase.open(tmp_path / "map")


def test_approximate_indexes_report_recall_against_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dim, n = 32, 2000
    vectors = l2_normalise(rng.normal(size=(n, dim)))
    with MapDatabase.create(tmp_path / "map", "random-vectors", dim) as db:
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
            for i in range(n)
        ]
        db.writer.store_batch(rows, vectors)
        db.writer.checkpoint()
        hnsw = db.build_approximate("hnsw", k=10)
        ivf = db.build_approximate("ivf", k=10)
        ivf_all = db.build_approximate("ivf", k=10, nprobe=10_000)
        for report in (hnsw, ivf, ivf_all):
            print(report.render())
            assert 0.0 < report.recall_at_k <= 1.0
            assert report.n_vectors == n and report.n_queries == 200
        assert hnsw.recall_at_k > 0.9
        assert ivf_all.recall_at_k > 0.99
        assert ivf.recall_at_k <= ivf_all.recall_at_k
        assert ivf.params["nlist"] == 2000 // 39
        query = vectors[123]
        assert db.search_images(query, None, k=1, approximate="hnsw")[0].image_id == 124
        assert db.search_images(query, None, k=1, approximate="ivf")[0].image_id == 124
        places = db.search(query, None, k=3, approximate="hnsw")
        assert places[0].place_id == "p30" and len(places) == 3
        assert any(kind.startswith("hnsw (current") for kind in db.info().index_types)
        db.writer.store_batch([{**rows[0], "path": "new.jpg", "sha256": "f" * 64}], vectors[:1])
        db.writer.checkpoint()
        with pytest.raises(MapError, match="predates the last map build"):
            db.search(query, None, approximate="ivf")


def test_second_writer_is_refused_and_progress_bar_runs(tmp_path: Path, dataset: Path) -> None:
    import fcntl

    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        with (tmp_path / "map" / "map.lock").open("a") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            with pytest.raises(MapError, match="another process is writing"):
                db.build(scan_csv(dataset), enc, progress=False)
        assert db.build(scan_csv(dataset), enc, progress=True).added == 15


def test_paths_are_stored_relative_to_their_source_root(tmp_path: Path, dataset: Path) -> None:
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        db.build(scan_csv(dataset), enc, progress=False, source_kind="csv")
        [source] = db.sources()
        assert source.root == (tmp_path / "ds").resolve().as_posix()
        assert (source.kind, source.n_images) == ("csv", 15)
        assert source.first_built == source.last_built != ""
        assert f"source:     {source.root} [csv]: 15 images" in db.info().render()
    with sqlite3.connect(tmp_path / "map" / "map.sqlite") as conn:
        paths = [str(r[0]) for r in conn.execute("SELECT path FROM images")]
        source_ids = {int(r[0]) for r in conn.execute("SELECT source_id FROM images")}
    assert len(paths) == 15 and source_ids == {source.id}
    assert all(p.startswith("img/p") and p.endswith(".png") for p in paths)


def test_moved_map_and_data_set_still_search_and_resume_after_relocate(tmp_path: Path) -> None:
    built = tmp_path / "server"
    make_dataset(built / "ds")
    enc = HistogramEncoder()
    with MapDatabase.create(built / "map", enc.fingerprint, enc.dim) as db:
        db.build(scan_csv(built / "ds" / "map.csv"), enc, progress=False)
    old_root = (built / "ds").resolve()
    robot = tmp_path / "robot" / "deploy"
    robot.parent.mkdir()
    shutil.move(built, robot)
    assert not old_root.exists()

    with MapDatabase.open(robot / "map") as db:
        hit = db.search(noisy_image(COLOURS[3], seed=5), enc, k=1)[0]
        assert hit.place_id == "p3" and hit.image_path.startswith("img/p3_")
        assert hit.image_root == old_root.as_posix()
        assert not hit.resolve().exists()
        assert hit.resolve(robot / "ds").is_file()

    (robot / "map" / EXACT_FILE).unlink()  # the crash case: rows stored, vectors lost
    enc = HistogramEncoder()
    with MapDatabase.open(robot / "map") as db:
        assert db.stats()["pending"] == 15
        # Without relocation the re-encode cannot find the files and says what to do.
        report = db.build(DatasetScan(root=old_root), enc, progress=False)
        assert (report.reencoded, enc.images_encoded) == (0, 0)
        assert len(report.skipped) == 15
        assert all(str(old_root) in s.source for s in report.skipped)
        assert all("data set root" in s.reason and "relocate" in s.reason for s in report.skipped)
        assert db.stats()["pending"] == 15

        with pytest.raises(MapError, match="has no data set at"):
            db.relocate(tmp_path / "elsewhere", robot / "ds")
        (tmp_path / "empty").mkdir()
        with pytest.raises(MapError, match="none of 15 sampled images"):
            db.relocate(old_root, tmp_path / "empty")
        with pytest.raises(MapError, match="not a directory"):
            db.relocate(old_root, tmp_path / "missing")
        assert db.relocate(old_root, robot / "ds") == 15
        assert db.sources()[0].root == (robot / "ds").resolve().as_posix()

        report = db.build(scan_csv(robot / "ds" / "map.csv"), enc, progress=False)
        assert (report.reencoded, report.added, report.already_present) == (15, 0, 15)
        assert enc.images_encoded == 15 and db.stats()["pending"] == 0
        hit = db.search(noisy_image(COLOURS[4], seed=1), enc, k=1)[0]
        assert hit.place_id == "p4" and hit.resolve().is_file()


def test_two_data_sets_in_one_map_keep_their_own_source(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / "a", places=2, per_place=2)
    second = make_dataset(tmp_path / "b", places=2, per_place=2, seed=7)  # same names
    enc = HistogramEncoder()
    with new_map(tmp_path, enc) as db:
        assert db.build(scan_csv(first), enc, progress=False, source_kind="csv").added == 4
        report = db.build(scan_csv(second), enc, progress=False)
        assert (report.added, report.already_present, report.skipped) == (4, 0, [])
        again = db.build(scan_csv(second), enc, progress=False)
        assert (again.added, again.already_present) == (0, 4)
        a, b = db.sources()
        assert (a.root, a.kind, a.n_images) == ((tmp_path / "a").resolve().as_posix(), "csv", 4)
        assert (b.root, b.kind, b.n_images) == ((tmp_path / "b").resolve().as_posix(), None, 4)
        hits = db.search_images(noisy_image(COLOURS[0], seed=0), enc, k=4)
        assert {h.image_root for h in hits} == {a.root, b.root}
        assert all(h.resolve().is_file() for h in hits)
        assert {h.path for h in hits} == {"img/p0_0.png", "img/p0_1.png"}
        with pytest.raises(MapError, match="already the root of another data set"):
            db.relocate(tmp_path / "a", tmp_path / "b")
        # content duplicates are still found across sources
        shutil.copy(tmp_path / "a" / "img" / "p1_0.png", tmp_path / "b" / "img" / "copy.png")
        dup = DatasetScan(root=tmp_path / "b", records=[ImageRecord("img/copy.png", "p1", 40, -70)])
        skipped = db.build(dup, enc, progress=False).skipped
        assert skipped[0].reason == f"duplicate image: same content as {a.root}/img/p1_0.png"


def test_map_of_an_older_schema_is_refused_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "old"
    directory.mkdir()
    with sqlite3.connect(directory / "map.sqlite") as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
            " sha256 TEXT NOT NULL UNIQUE, place_id TEXT NOT NULL, lat REAL, lon REAL,"
            " heading REAL, date TEXT);"
            "INSERT INTO meta VALUES ('schema_version', '1'), ('encoder_fingerprint', 'x'),"
            " ('dim', '48'), ('generation', '1');"
            "INSERT INTO images VALUES (1, '/srv/ds/img/a.png', 'aa', 'p0', 0, 0, NULL, NULL);"
        )
    conn.close()
    with pytest.raises(MapError, match=r"uses map schema 1, this dlgpr reads schema 2.*rebuild"):
        MapDatabase.open(directory)
    with sqlite3.connect(directory / "map.sqlite") as conn:
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "sources" not in tables  # not half-converted
    with sqlite3.connect(directory / "map.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(MapError, match="newer than the schema 2 this dlgpr reads; upgrade"):
        MapDatabase.open(directory)


def test_encoder_choice_follows_the_recorded_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No flag: the recorded encoder with its checkpoint; another encoder never gets the
    recorded checkpoint; an explicit checkpoint always wins; nothing recorded: the default."""
    with MapDatabase.create(tmp_path / "bare", "fp", 4) as db:
        assert db.encoder_choice() == ("dlgpr-lite", None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "best").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "best" / "model.safetensors").write_bytes(b"weights")
    weights = (tmp_path / "runs" / "x" / "best" / "model.safetensors").as_posix()
    with MapDatabase.create(tmp_path / "map", "fp", 4) as db:
        db.set_encoder_spec("cmpl:runs/x/best", "runs/x/best/model.safetensors")
        name = f"cmpl:{tmp_path.as_posix()}/runs/x/best"  # recorded resolved (finding 7)
        assert db.encoder_choice() == (name, weights)
        assert db.encoder_choice(name)[1] == weights
        assert db.encoder_choice("dlgpr-lite") == ("dlgpr-lite", None)
        assert db.encoder_choice(None, tmp_path / "w.st") == (name, str(tmp_path / "w.st"))
