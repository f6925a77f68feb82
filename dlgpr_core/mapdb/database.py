"""A street-view map: a directory holding ``map.sqlite`` and ``embeddings.faiss``.

Crash consistency rests on one ordering rule: the FAISS index is written (atomically)
*before* the SQLite transaction holding its rows commits. After a crash the index can
therefore only hold ids SQLite does not know (dropped on open), and SQLite can only hold
rows the index lacks if the index file was lost (re-encoded by the next build). Row ids
are the FAISS ids, so the two never need a mapping table.

Image paths are stored relative to the root of the data set they came from (one
``sources`` row per root), because maps are built on one machine and used on others:
search results carry the relative path plus that root, and `MapDatabase.relocate`
re-points a data set that moved.

A map built with a `FineEncoder` (CMPL) also keeps each image's fine features in SQLite
(``fine_features``, written with the image row), and text search re-ranks the FAISS top-N
with them. Rows whose fine features are missing are treated like rows missing their vector:
dropped from the in-memory index and re-encoded by the next build.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from dlgpr_core.data.records import DatasetScan, SkippedItem
from dlgpr_core.encoders.base import Encoder, FineEncoder, l2_normalise
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import (
    APPROX_KINDS,
    EXACT_FILE,
    ApproxKind,
    ApproxReport,
    ExactIndex,
    approx_file,
    atomic_write_index,
    build_approximate,
    faiss_module,
    noisy_queries,
    recall_at_k,
    to_search_device,
)
from dlgpr_core.mapdb.report import BuildReport, ImageHit, MapInfo, MapSource, PlaceHit
from dlgpr_core.mapdb.store import SCHEMA_VERSION, ImageRow, MapStore, utc_now

MAP_FILE = "map.sqlite"
LOCK_FILE = "map.lock"
BUILD_HINT = "dlgpr map build"
APPROX_HINT = "dlgpr map index --kind {kind}"
"""How messages tell the user to (re)build an approximate index; keep in step with the CLI."""

Query = str | np.ndarray | Image.Image

_NOT_IMAGE_COLUMNS = frozenset({"id", "source_root", "source_kind"})
"""Keys of a `_store_batch` row that are not `MapStore.insert_image` arguments."""


class MapDatabase:
    """Open with `MapDatabase.open` or `MapDatabase.create`; close (or use ``with``) when done."""

    def __init__(self, directory: Path, store: MapStore) -> None:
        self.directory = directory
        self._store = store
        # The version first: another schema may lack (or misname) the keys read below.
        version = store.stored_version
        if version is not None and version < SCHEMA_VERSION:
            raise MapError(
                f"{directory} uses map schema {version}, this dlgpr reads schema "
                f"{SCHEMA_VERSION} (image paths relative to their data set root); rebuild "
                f"the map with `{BUILD_HINT}` into a new directory"
            )
        if version is not None and version > SCHEMA_VERSION:
            raise MapError(
                f"{directory} uses map schema {version}, newer than the schema "
                f"{SCHEMA_VERSION} this dlgpr reads; upgrade dlgpr or rebuild the map with "
                f"`{BUILD_HINT}` into a new directory"
            )
        meta = store.all_meta()
        try:
            self.encoder_fingerprint = meta["encoder_fingerprint"]
            self.dim = int(meta["dim"])
            self.created = meta.get("created", "")
            self.fine_shape = _parse_shape(meta.get("fine_shape"))
            int(meta["schema_version"])
        except (KeyError, ValueError) as exc:
            raise MapError(
                f"{directory / MAP_FILE} lacks map metadata ({exc}); it is not a map"
            ) from exc
        self._exact = ExactIndex(self.dim)
        self._pending: set[int] = set()
        self._index_dirty = False
        self._uncommitted: list[int] = []
        self._touched_places: set[str] = set()
        self._approx: dict[str, tuple[str, Any]] = {}
        self._lock = store.lock
        self._reload()

    # -- lifecycle ----------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path | str, encoder_fingerprint: str, dim: int) -> MapDatabase:
        """Create an empty map; refuses a directory that already holds one."""
        directory = Path(directory)
        if (directory / MAP_FILE).exists():
            raise MapError(
                f"a map already exists at {directory}; open it, or choose another directory"
            )
        if dim <= 0 or not encoder_fingerprint:
            raise MapError("a map needs an encoder fingerprint and a positive embedding dimension")
        directory.mkdir(parents=True, exist_ok=True)
        store = MapStore(directory / MAP_FILE)
        store.begin()
        for key, value in {
            "schema_version": str(SCHEMA_VERSION),
            "encoder_fingerprint": encoder_fingerprint,
            "dim": str(dim),
            "created": utc_now(),
            "generation": "0",
        }.items():
            store.set_meta(key, value)
        ExactIndex(dim).save(directory / EXACT_FILE)
        store.commit()
        return cls(directory, store)

    @classmethod
    def open(cls, directory: Path | str) -> MapDatabase:
        """Open an existing map, dropping index entries whose rows never committed.

        The map directory may have moved: nothing in it names its own location. Image
        paths in results are relative to their data set root; where the data set itself
        moved, search still works (``hit.resolve(new_root)`` finds the file) and
        `relocate` re-points the map for builds and re-encoding.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise MapError(f"no map directory at {directory}; build one with `{BUILD_HINT}`")
        if not (directory / MAP_FILE).is_file():
            raise MapError(
                f"{directory} holds no map ({MAP_FILE} missing); build one with `{BUILD_HINT}`"
            )
        try:
            store = MapStore(directory / MAP_FILE)
        except Exception as exc:  # sqlite3.DatabaseError for a non-database file
            raise MapError(f"{directory / MAP_FILE} is not a readable map: {exc}") from exc
        try:
            return cls(directory, store)
        except BaseException:
            store.close()  # a refused map must not keep its SQLite file open
            raise

    @classmethod
    def open_or_create(cls, directory: Path | str, encoder: Encoder) -> MapDatabase:
        """What `dlgpr map build` wants: reuse the map if present, else start one."""
        directory = Path(directory)
        if (directory / MAP_FILE).exists():
            db = cls.open(directory)
            db.check_encoder(encoder)
            return db
        return cls.create(directory, encoder.fingerprint, encoder.dim)

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> MapDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _reload(self) -> None:
        """Load the index and reconcile it with SQLite (see the module docstring)."""
        path = self.directory / EXACT_FILE
        if path.exists():
            try:
                self._exact = ExactIndex.load(path, self.dim)
            except (RuntimeError, ValueError) as exc:
                raise MapError(
                    f"{path} is unreadable ({exc}); delete it and run `{BUILD_HINT}` again "
                    "to re-encode every stored image"
                ) from exc
        else:
            self._exact = ExactIndex(self.dim)
        index_ids = set(self._exact.ids().tolist())
        db_ids = set(self._store.image_ids())
        orphans = np.fromiter(index_ids - db_ids, dtype=np.int64)
        self._index_dirty = self._exact.remove(orphans) > 0
        if self.fine_shape is not None:
            # A vector without its fine features cannot be re-ranked: re-encode the image.
            lacking = set(self._store.ids_without_fine()) & index_ids
            if lacking:
                self._exact.remove(np.fromiter(lacking, dtype=np.int64))
                self._index_dirty = True
                index_ids -= lacking
        self._pending = db_ids - index_ids
        self._approx.clear()

    # -- encoder checks -----------------------------------------------------------
    def set_encoder_spec(self, name: str, checkpoint: str | None) -> None:
        """Remember how to re-create the encoder, so later commands need no encoder flags."""
        with self._lock:
            self._store.begin()
            self._store.set_meta("encoder.name", name)
            if checkpoint:
                self._store.set_meta("encoder.checkpoint", checkpoint)
            else:
                self._store.delete_meta("encoder.checkpoint")
            self._store.commit()

    def encoder_spec(self) -> dict[str, str]:
        """``{"name": ..., "checkpoint": ...}`` as set; keys absent where never recorded."""
        with self._lock:
            meta = self._store.all_meta()
        return {k.removeprefix("encoder."): v for k, v in meta.items() if k.startswith("encoder.")}

    def encoder_choice(
        self, name: str | None = None, checkpoint: str | Path | None = None
    ) -> tuple[str, str | None]:
        """(encoder spec, checkpoint) to query this map with: the named encoder, else the
        one recorded at creation; the recorded checkpoint goes only with the recorded
        encoder, so a map needs no --encoder flag and never lends its weights to another."""
        from dlgpr_core.encoders.factory import DEFAULT_NAME

        spec = self.encoder_spec()
        chosen = name or spec.get("name") or DEFAULT_NAME
        if checkpoint:
            return chosen, str(checkpoint)
        return chosen, spec.get("checkpoint") if chosen == spec.get("name") else None

    def check_encoder(self, encoder: Encoder) -> None:
        """Embeddings of different encoders are not comparable: refuse, never mix."""
        if encoder.fingerprint != self.encoder_fingerprint:
            raise MapError(
                f"map {self.directory} was built with {self.encoder_fingerprint}, "
                f"query encoder is {encoder.fingerprint}; rebuild the map or pass the "
                "matching encoder"
            )
        if encoder.dim != self.dim:
            raise MapError(
                f"map {self.directory} stores {self.dim}-dim embeddings but the encoder "
                f"produces {encoder.dim}; rebuild the map or pass the matching encoder"
            )

    # -- building -----------------------------------------------------------------
    @contextmanager
    def _build_lock(self) -> Iterator[None]:
        """One writer per map across processes; a second build would fork the index file."""
        handle = (self.directory / LOCK_FILE).open("a")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MapError(
                    f"another process is writing to the map {self.directory}; wait for it to finish"
                ) from None
            with self._lock:
                yield
        finally:
            handle.close()

    def build(
        self,
        scan: DatasetScan,
        encoder: Encoder,
        batch_size: int = 32,
        progress: bool = True,
        *,
        workers: int = 4,
        checkpoint_seconds: float = 30.0,
        source_kind: str | None = None,
    ) -> BuildReport:
        """Encode and store every new image of ``scan``; resumable and incremental.

        Images whose (data set root, relative path) is stored are counted as already
        present and not read; a scan of another root adds a second source to the map.
        ``source_kind`` (the data set format, e.g. ``"gsv"``) is recorded with the source.
        Stored rows lacking an embedding (the index file was lost) are re-encoded first,
        from their source's root; a data set that moved needs `relocate` before that.
        Progress is committed every ``checkpoint_seconds`` and when the build raises,
        so an interrupted build loses at most the batch in flight.
        """
        from dlgpr_core.mapdb.builder import Builder

        self.check_encoder(encoder)
        if batch_size <= 0:
            raise MapError("batch_size must be positive")
        start = time.perf_counter()
        with self._build_lock():
            self._use_fine(encoder)
            self._reload()
            report = BuildReport(skipped=list(scan.skipped))
            builder = Builder(self, encoder, report, batch_size, progress, workers, source_kind)
            try:
                builder.run(scan, checkpoint_seconds)
            except BaseException:
                self._checkpoint_or_rollback(report.skipped)
                raise
            self._checkpoint(report.skipped)
        report.seconds = time.perf_counter() - start
        done = report.added + report.reencoded
        report.images_per_second = done / report.seconds if report.seconds > 0 else 0.0
        return report

    def _use_fine(self, encoder: Encoder) -> None:
        """Record the fine-feature shape on the first build with a FineEncoder; refuse a
        build that would leave a fine map's new rows without features."""
        shape = tuple(encoder.fine_shape) if isinstance(encoder, FineEncoder) else None
        if shape == self.fine_shape:
            return
        if self.fine_shape is not None:
            raise MapError(
                f"map {self.directory} stores fine features of shape {self.fine_shape}, the "
                f"encoder gives {shape}; build it with the encoder it was created with"
            )
        assert shape is not None
        self._store.begin()
        self._store.set_meta("fine_shape", ",".join(str(int(v)) for v in shape))
        self._store.commit()
        self.fine_shape = (int(shape[0]), int(shape[1]), int(shape[2]))

    def _store_batch(
        self, rows: Sequence[dict[str, Any]], vectors: np.ndarray, fine: np.ndarray | None = None
    ) -> None:
        """Insert rows (or reuse ``id`` for re-encoded ones) and add their vectors.

        A savepoint makes the batch all-or-nothing in SQLite; the FAISS add comes last,
        so a failure before it leaves nothing to undo in the index.
        """
        self._store.begin()
        self._store.savepoint("batch")
        try:
            ids = []
            sources: dict[str, int] = {}
            for row in rows:
                if row.get("id") is not None:
                    ids.append(int(row["id"]))
                    continue
                root = str(row["source_root"])
                if root not in sources:
                    sources[root] = self._store.ensure_source(root, row["source_kind"], utc_now())
                fields = {k: v for k, v in row.items() if k not in _NOT_IMAGE_COLUMNS}
                ids.append(self._store.insert_image(source_id=sources[root], **fields))
                self._touched_places.add(str(row["place_id"]))
            if fine is not None:
                f16 = np.ascontiguousarray(fine, dtype=np.float16)
                self._store.put_fine((i, f16[n].tobytes()) for n, i in enumerate(ids))
            self._exact.add(vectors, np.asarray(ids, dtype=np.int64))
        except BaseException:
            self._store.rollback_to("batch")
            raise
        self._store.release("batch")
        self._uncommitted.extend(ids)
        self._index_dirty = True

    def _checkpoint(self, skipped: Sequence[SkippedItem] = ()) -> None:
        """Index to disk first, then commit: the ordering the module docstring relies on."""
        if self._index_dirty or self._uncommitted:
            self._store.begin()
            self._store.recentre_places(sorted(self._touched_places))
            generation = int(self._store.get_meta("generation") or 0) + 1
            self._store.set_meta("generation", str(generation))
            self._exact.save(self.directory / EXACT_FILE)
        if skipped:
            self._store.begin()
            self._store.record_skipped(skipped)
        self._store.commit()
        self._pending.difference_update(self._uncommitted)
        self._uncommitted.clear()
        self._touched_places.clear()
        self._index_dirty = False

    def _checkpoint_or_rollback(self, skipped: Sequence[SkippedItem]) -> None:
        """Keep finished batches of a failing build; if even that fails, undo cleanly."""
        try:
            self._checkpoint(skipped)
        except Exception:
            self._store.rollback()
            self._exact.remove(np.asarray(self._uncommitted, dtype=np.int64))
            self._uncommitted.clear()
            self._touched_places.clear()
            self._reload()

    # -- data set sources ---------------------------------------------------------
    def sources(self) -> list[MapSource]:
        """The data sets this map was built from, oldest first."""
        with self._lock:
            return [MapSource(*row) for row in self._store.sources()]

    def relocate(self, old_root: Path | str, new_root: Path | str) -> int:
        """Re-point the images of the data set built from ``old_root`` at ``new_root``.

        The one mechanism for a data set that moved (another machine, another folder):
        it rewrites that source's root in the map, so later builds from ``new_root``
        recognise its images as already present and re-encoding after a crash reads them
        there. Searching needs no relocation: results carry relative paths, and
        ``hit.resolve(root)`` joins them with wherever this machine keeps the data set.

        ``old_root`` is matched as recorded (see `sources`); ``new_root`` must be a
        directory holding the source's images (a sample is checked, to catch a wrong
        folder) and must not be another source's root. Returns the number of images
        re-pointed.
        """
        new = Path(new_root)
        if not new.is_dir():
            raise MapError(f"cannot relocate to {new}: not a directory")
        new_key = new.resolve().as_posix()
        with self._build_lock():
            known = {src.root: src for src in self.sources()}
            old = next((known[c] for c in _root_spellings(old_root) if c in known), None)
            if old is None:
                raise MapError(
                    f"map {self.directory} has no data set at {old_root}; its data set roots "
                    f"are: {', '.join(known) or 'none'}"
                )
            if new_key == old.root:
                return old.n_images
            clash = known.get(new_key)
            if clash is not None and clash.n_images:
                raise MapError(
                    f"{new_key} is already the root of another data set of map {self.directory} "
                    f"({clash.n_images} images); relocate that one first or choose another folder"
                )
            sample = self._store.source_paths(old.id, 16)
            if sample and not any((Path(new_key) / rel).is_file() for rel in sample):
                raise MapError(
                    f"none of {len(sample)} sampled images of {old.root} (e.g. {sample[0]}) is "
                    f"under {new_key}; pass the folder the data set was moved to"
                )
            self._store.begin()
            if clash is not None:
                self._store.delete_source(clash.id)
            self._store.set_source_root(old.id, new_key)
            self._store.commit()
            return old.n_images

    # -- approximate indexes ------------------------------------------------------
    def build_approximate(
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
        with self._build_lock():
            self._reload()
            if self._exact.ntotal == 0:
                raise MapError(f"map {self.directory} has no images; build it with `{BUILD_HINT}`")
            start = time.perf_counter()
            vectors, ids = self._exact.vectors(), self._exact.ids()
            try:
                index, used = build_approximate(vectors, ids, kind, **params)
            except TypeError as exc:
                raise MapError(f"bad parameters for a {kind} index: {exc}") from exc
            seconds = time.perf_counter() - start
            if queries is None:
                queries = noisy_queries(vectors, n_queries, noise)
            recall, exact_ms, approx_ms = recall_at_k(self._exact, index, queries, k)
            path = self.directory / approx_file(kind)
            atomic_write_index(index, path)
            self._store.begin()
            self._store.set_meta(f"approx.{kind}.generation", self._generation())
            self._store.set_meta(f"approx.{kind}.recall_at_{k}", f"{recall:.4f}")
            self._store.commit()
            self._approx.pop(kind, None)
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

    def _generation(self) -> str:
        return self._store.get_meta("generation") or "0"

    def _approx_index(self, kind: ApproxKind) -> Any:
        """Load (once per map generation) an approximate index, refusing a stale one."""
        built = self._store.get_meta(f"approx.{kind}.generation")
        path = self.directory / approx_file(kind)
        hint = APPROX_HINT.format(kind=kind)
        if built is None or not path.exists():
            raise MapError(f"map {self.directory} has no {kind} index; build it with `{hint}`")
        if built != self._generation():
            raise MapError(
                f"the {kind} index of {self.directory} predates the last map build; "
                f"rebuild it with `{hint}` or search the exact index"
            )
        cached = self._approx.get(kind)
        if cached is None or cached[0] != built:
            index = faiss_module().read_index(str(path))
            cached = (built, to_search_device(index))
            self._approx[kind] = cached
        return cached[1]

    # -- searching ----------------------------------------------------------------
    def _query_vector(self, query: Query, encoder: Encoder | None) -> np.ndarray:
        if encoder is not None:
            self.check_encoder(encoder)
        if isinstance(query, str | Image.Image) and encoder is None:
            raise MapError(
                f"a text or image query needs an encoder; pass the one the map was built "
                f"with ({self.encoder_fingerprint})"
            )
        if isinstance(query, str):
            assert encoder is not None
            vec = encoder.encode_texts([query])
        elif isinstance(query, Image.Image):
            assert encoder is not None
            vec = encoder.encode_images([query.convert("RGB")])
        else:
            vec = np.asarray(query, dtype=np.float32)
            if vec.ndim == 1:
                vec = vec[None, :]
            if vec.ndim != 2 or vec.shape[0] != 1 or vec.shape[1] != self.dim:
                raise MapError(
                    f"query embedding has shape {tuple(np.shape(query))}, map {self.directory} "
                    f"needs one {self.dim}-dim vector; embed the query with the map's encoder "
                    f"({self.encoder_fingerprint})"
                )
        return l2_normalise(np.asarray(vec, dtype=np.float32).reshape(1, self.dim))

    def _raw_search(
        self, vec: np.ndarray, k: int, approximate: ApproxKind | None
    ) -> list[tuple[float, int]]:
        if self._exact.ntotal == 0:
            stored = self._store.count("images")
            if stored:
                raise MapError(
                    f"map {self.directory} has {stored} images but none is indexed; "
                    f"run `{BUILD_HINT}` again to re-encode them"
                )
            raise MapError(f"map {self.directory} has no images; build it with `{BUILD_HINT}`")
        k = max(1, min(k, self._exact.ntotal))
        if approximate is None:
            scores, ids = self._exact.search(vec, k)
        elif approximate in APPROX_KINDS:
            approx = self._approx_index(approximate)
            inner = getattr(approx, "index", None)
            hnsw = getattr(faiss_module().downcast_index(inner), "hnsw", None) if inner else None
            if hnsw is not None and hnsw.efSearch < k:
                hnsw.efSearch = k
            scores, ids = approx.search(vec, k)
        else:
            raise MapError(f"unknown approximate index {approximate!r}; choose ivf or hnsw")
        return [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def search_images(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | None = None,
    ) -> list[ImageHit]:
        """Top-``k`` images. ``query``: text or image (needs ``encoder``) or an embedding.

        ``approximate`` ("ivf"/"hnsw") searches that index instead of the exact one; it
        must have been built (`build_approximate`) since the last map build.
        """
        with self._lock:
            vec = self._query_vector(query, encoder)
            found = self._raw_search(vec, k, approximate)
            rows = self._store.rows_by_ids([i for _, i in found])
            hits: list[ImageHit] = []
            for score, image_id in found:
                row = rows.get(image_id)
                if row is None:  # an id a concurrent build has not committed yet
                    continue
                hits.append(
                    ImageHit(
                        rank=len(hits) + 1,
                        score=score,
                        image_id=image_id,
                        path=row.path,
                        place_id=row.place_id,
                        lat=row.lat,
                        lon=row.lon,
                        heading=row.heading,
                        date=row.date,
                        city=row.city,
                        image_root=row.root,
                    )
                )
            return hits

    def search(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | None = None,
        rerank_top: int = 50,
    ) -> list[PlaceHit]:
        """Top-``k`` places, each scored by its best image.

        Searches ever more images (x4 each round) until ``k`` distinct places appear or
        the whole map has been ranked, because one place can own many top images.

        A text query to a map with fine features, with its FineEncoder, re-ranks the
        ``rerank_top`` best images by global cosine + fine score (from the stored features:
        no image is read or encoded); those stay ahead of the rest, which keep cosine order.
        """
        with self._lock:
            if (
                isinstance(query, str)
                and isinstance(encoder, FineEncoder)
                and self.fine_shape is not None
                and rerank_top > 0
            ):
                return self._search_fine(query, encoder, k, approximate, rerank_top)
            vec = self._query_vector(query, encoder)
            return self._top_places(vec, k, approximate, max(4 * k, 32))

    def _top_places(
        self,
        vec: np.ndarray,
        k: int,
        approximate: ApproxKind | None,
        first_n: int,
        reorder: Callable[[list[tuple[float, int]]], list[tuple[float, int]]] | None = None,
    ) -> list[PlaceHit]:
        """Places ranked by their first image in the (optionally re-ordered) image ranking,
        searching x4 more images each round until ``k`` distinct places appear or the whole
        map is ranked, because one place can own many top images."""
        n = min(self._exact.ntotal, first_n) if self._exact.ntotal else 1
        while True:
            found = self._raw_search(vec, n, approximate)
            ordered = reorder(found) if reorder else found
            rows = self._store.rows_by_ids([i for _, i in ordered])
            best: dict[str, tuple[float, int]] = {}
            for score, image_id in ordered:
                row = rows.get(image_id)
                if row is not None and row.place_id not in best:
                    best[row.place_id] = (score, image_id)
            if len(best) >= k or n >= self._exact.ntotal:
                return self._place_hits(list(best.items())[:k], rows)
            n = min(self._exact.ntotal, n * 4)

    def _place_hits(
        self, ranked: Sequence[tuple[str, tuple[float, int]]], rows: dict[int, ImageRow]
    ) -> list[PlaceHit]:
        coords = self._store.place_coords([p for p, _ in ranked])
        return [
            PlaceHit(
                rank=rank,
                score=score,
                place_id=place_id,
                lat=coords[place_id][0],
                lon=coords[place_id][1],
                image_path=rows[image_id].path,
                image_id=image_id,
                city=rows[image_id].city,
                image_root=rows[image_id].root,
            )
            for rank, (place_id, (score, image_id)) in enumerate(ranked, start=1)
        ]

    def _search_fine(
        self,
        text: str,
        encoder: FineEncoder,
        k: int,
        approximate: ApproxKind | None,
        rerank_top: int,
    ) -> list[PlaceHit]:
        """`search` with fine re-ranking; places rank by their first image in the re-ranked
        list, as `encoders.evaluate.place_recall_from_embeddings` counts them."""
        self.check_encoder(encoder)
        assert self.fine_shape is not None
        glob, tfine = encoder.encode_texts_with_fine([text])
        vec = l2_normalise(np.asarray(glob, dtype=np.float32).reshape(1, self.dim))
        reranked: list[tuple[float, int]] = []

        def reorder(found: list[tuple[float, int]]) -> list[tuple[float, int]]:
            if not reranked:  # the top-N is the same in every round: score it once
                reranked.extend(self._rerank(found[:rerank_top], tfine[0], encoder))
            done = {i for _, i in reranked}
            return reranked + [(s, i) for s, i in found if i not in done]

        return self._top_places(vec, k, approximate, max(4 * k, 32, rerank_top), reorder)

    def _rerank(
        self, found: list[tuple[float, int]], text_fine: np.ndarray, encoder: FineEncoder
    ) -> list[tuple[float, int]]:
        """Global + fine score of the images that have stored fine features, best first;
        an image without them (a concurrent build's) keeps its place among the rest."""
        assert self.fine_shape is not None
        blobs = self._store.fine_by_ids([i for _, i in found])
        have = [(s, i) for s, i in found if i in blobs]
        if not have:
            return []
        fine = np.stack(
            [np.frombuffer(blobs[i], dtype=np.float16).reshape(self.fine_shape) for _, i in have]
        )
        scores = np.asarray([s for s, _ in have], np.float32) + encoder.fine_scores(text_fine, fine)
        order = np.argsort(-scores, kind="stable")
        return [(float(scores[j]), have[j][1]) for j in order]

    # -- reporting ----------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counts only; cheap enough for a status topic."""
        with self._lock:
            return {
                "places": self._store.count("places"),
                "images": self._store.count("images"),
                "indexed": self._exact.ntotal,
                "pending": len(self._pending),
                "skipped": self._store.count("skipped"),
            }

    def skipped(self) -> list[SkippedItem]:
        """Every input any build of this map refused, with the latest reason."""
        with self._lock:
            return [SkippedItem(source, reason) for source, reason, _ in self._store.skipped()]

    def info(self) -> MapInfo:
        """Counts plus encoder, index kinds and their size per image on disk."""
        with self._lock:
            counts = self.stats()
            n = max(1, counts["indexed"])
            kinds = ["exact (IndexIDMap2 over IndexFlatIP)"]
            sizes: dict[str, float] = {"raw vector": float(self.dim * 4)}
            exact_path = self.directory / EXACT_FILE
            if exact_path.exists():
                sizes["exact"] = exact_path.stat().st_size / n
            fine_bytes: float | None = None
            if self.fine_shape is not None:
                total, n_fine = self._store.fine_bytes()
                fine_bytes = total / max(1, n_fine)
                sizes[f"fine features {'x'.join(map(str, self.fine_shape))} float16"] = fine_bytes
            generation = self._generation()
            for kind in APPROX_KINDS:
                path = self.directory / approx_file(kind)
                built = self._store.get_meta(f"approx.{kind}.generation")
                if built is None or not path.exists():
                    continue
                state = "current" if built == generation else "stale, rebuild it"
                kinds.append(f"{kind} ({state})")
                sizes[kind] = path.stat().st_size / n
            return MapInfo(
                directory=str(self.directory),
                encoder_fingerprint=self.encoder_fingerprint,
                dim=self.dim,
                created=self.created,
                schema_version=SCHEMA_VERSION,
                n_places=counts["places"],
                n_images=counts["images"],
                n_indexed=counts["indexed"],
                n_pending=counts["pending"],
                n_skipped=counts["skipped"],
                index_types=kinds,
                bytes_per_embedding=sizes,
                sources=self.sources(),
                fine_bytes_per_image=fine_bytes,
            )


def _parse_shape(value: str | None) -> tuple[int, int, int] | None:
    """Meta ``fine_shape`` ("levels,queries,width") of a map built with a FineEncoder."""
    if not value:
        return None
    try:
        a, b, c = (int(v) for v in value.split(","))
    except ValueError as exc:
        raise MapError(f"unreadable fine_shape {value!r} in map metadata") from exc
    return a, b, c


def _root_spellings(root: Path | str) -> list[str]:
    """How a root given by the user may appear in ``sources.root``: it may no longer exist
    (so resolving can stop short of symlinks it once went through) or be given relative."""
    path = Path(root)
    return list(
        dict.fromkeys([path.as_posix(), path.absolute().as_posix(), path.resolve().as_posix()])
    )
