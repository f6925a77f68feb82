"""`MapDatabase`: the one object callers hold for a street-view map.

A facade over the layers that each keep one rule: `directory` (the on-disk map, its
schema, encoder and writer lock), `vectors` (the in-memory index and the crash-consistency
ordering), `builder` through `target`/`writer` (the batch loop), `search`, `approximate`,
`sources` (relative paths and relocation) and `info`. It adds no behaviour of its own
beyond wiring a build together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np

from dlgpr_core.data.records import DatasetScan, SkippedItem
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb.annotating import (
    AnnotateReport,
    AnnotateStage,
    ImageAnnotator,
    annotate_map,
)
from dlgpr_core.mapdb.approximate import ApproxIndexes
from dlgpr_core.mapdb.builder import Builder, RemoteStage, Stored
from dlgpr_core.mapdb.choice import IndexChoice, IndexSetting
from dlgpr_core.mapdb.directory import MAP_FILE, FineShape, MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.evidence import EvidenceItem, EvidenceStore
from dlgpr_core.mapdb.index import ApproxKind, ApproxReport
from dlgpr_core.mapdb.info import map_info, map_skipped, map_stats
from dlgpr_core.mapdb.lexical import LexicalIndex, LexicalSpec, fuse
from dlgpr_core.mapdb.report import (
    BuildReport,
    ImageHit,
    MapInfo,
    MapSource,
    PlaceHit,
    describe_unseen_rates,
)
from dlgpr_core.mapdb.search import MapSearch, Query
from dlgpr_core.mapdb.sources import list_sources, relocate
from dlgpr_core.mapdb.store import ImageRow
from dlgpr_core.mapdb.vectors import MapVectors
from dlgpr_core.mapdb.writer import MapWriter

__all__ = ["MAP_FILE", "MapDatabase", "Query"]

LEXICAL_POOL = 200
"""Places the dense search hands the lexical channel to re-score (whole maps up to this)."""


class MapDatabase:
    """Open with `MapDatabase.open` or `MapDatabase.create`; close (or use ``with``) when done."""

    def __init__(self, map_dir: MapDirectory) -> None:
        self._map = map_dir
        self._vectors = MapVectors(map_dir)
        self._approx = ApproxIndexes(map_dir, self._vectors)
        self._search = MapSearch(map_dir, self._vectors, self._approx)
        self.writer = MapWriter(map_dir, self._vectors)
        """What a build writes through (`BuildTarget`); `build` is the usual way in."""
        self.evidence = EvidenceStore(map_dir.store)
        """What annotators derived from the images (`annotate` writes it)."""
        self._lexical: dict[tuple[str, float, int], LexicalIndex] = {}
        self._vectors.reload()

    # -- lifecycle ----------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path | str, encoder_fingerprint: str, dim: int) -> MapDatabase:
        """Create an empty map; refuses a directory that already holds one."""
        return cls(MapDirectory.create(Path(directory), encoder_fingerprint, dim))

    @classmethod
    def open(cls, directory: Path | str, read_only: bool | None = None) -> MapDatabase:
        """Open an existing map, dropping index entries whose rows never committed.

        The map directory may have moved: nothing in it names its own location. Image
        paths in results are relative to their data set root; where the data set itself
        moved, search still works (``hit.resolve(new_root)`` finds the file) and
        `relocate` re-points the map for builds and re-encoding.

        ``read_only``: None opens a map that cannot be written here (a read-only mount,
        ``chmod a-w``) read-only and any other read-write; True writes nothing even to a
        writable map; see `MapDirectory.open`. A read-only map searches and reports;
        writing verbs refuse with the reason.
        """
        map_dir = MapDirectory.open(Path(directory), read_only)
        try:
            return cls(map_dir)
        except BaseException:
            map_dir.close()  # a refused map must not keep its SQLite file open
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
        self._map.close()

    def __enter__(self) -> MapDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the map is ----------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self._map.directory

    @property
    def encoder_fingerprint(self) -> str:
        return self._map.encoder_fingerprint

    @property
    def dim(self) -> int:
        return self._map.dim

    @property
    def read_only(self) -> bool:
        """Opened read-only: searches and reports only (see `open`)."""
        return self._map.read_only

    @property
    def created(self) -> str:
        return self._map.created

    @property
    def fine_shape(self) -> FineShape | None:
        return self._map.fine_shape

    def set_encoder_spec(self, name: str, checkpoint: str | Path | None) -> None:
        """Record how to re-create the encoder; see `MapDirectory.set_encoder_spec`."""
        self._map.set_encoder_spec(name, checkpoint)

    def encoder_spec(self) -> dict[str, str]:
        """The recorded encoder name and checkpoint; see `MapDirectory.encoder_spec`."""
        return self._map.encoder_spec()

    def encoder_choice(
        self, name: str | None = None, checkpoint: str | Path | None = None
    ) -> tuple[str, str | None]:
        """The encoder to query this map with; see `MapDirectory.encoder_choice`."""
        return self._map.encoder_choice(name, checkpoint)

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder whose embeddings this map cannot compare; see `MapDirectory`."""
        self._map.check_encoder(encoder)

    # -- writing ------------------------------------------------------------------
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
        remote: RemoteStage | None = None,
        stored: Stored | None = None,
    ) -> BuildReport:
        """Encode and store every new image of ``scan``; resumable and incremental.

        Images whose (data set root, relative path) is stored are counted as already
        present and not read; a scan of another root adds a second source to the map.
        ``source_kind`` (the data set format, e.g. ``"gsv"``) is recorded with the source.
        Stored rows lacking an embedding (the index file was lost) are re-encoded first,
        from their source's root; a data set that moved needs `relocate` before that.
        Progress is committed every ``checkpoint_seconds`` and when the build raises,
        so an interrupted build loses at most the batch in flight.

        ``remote`` loads and encodes elsewhere (Ray workers: `dlgpr_core.mapdb.distributed`)
        under the same rules; ``stored`` is told each stored batch's row ids inside the
        open transaction (see `dlgpr_core.mapdb.builder`).
        """
        self._map.check_encoder(encoder)
        if batch_size <= 0:
            raise MapError("batch_size must be positive")
        start = time.perf_counter()
        with self._map.writing("build"):
            self._map.use_fine(encoder)
            self._vectors.reload()
            self._approx.forget()
            report = BuildReport(skipped=list(scan.skipped))
            builder = Builder(
                self.writer, encoder, report, batch_size, progress, workers, source_kind, stored
            )
            try:
                builder.run(scan, checkpoint_seconds, remote)
            except BaseException:
                self.writer.checkpoint_or_rollback(report.skipped)
                raise
            self.writer.checkpoint(report.skipped)
        report.seconds = time.perf_counter() - start
        done = report.added + report.reencoded
        report.images_per_second = done / report.seconds if report.seconds > 0 else 0.0
        self._finish_build(report)
        return report

    def _finish_build(self, report: BuildReport) -> None:
        """Bring the index the map searches by default up to date after a build (building
        it where the map's size chose an approximate one) and say which it is."""
        index_report = self._approx.ensure_chosen()
        report.search_index = self._approx.choice().render()
        if index_report is not None:
            report.search_index += "\n" + index_report.render()

    def annotate(
        self,
        annotator: ImageAnnotator,
        *,
        batch_size: int = 16,
        progress: bool = True,
        workers: int = 4,
        redo: bool = False,
        stage: AnnotateStage | None = None,
    ) -> AnnotateReport:
        """Derive evidence from every image `annotator` has not done yet (at its version);
        resumable and incremental, see `dlgpr_core.mapdb.annotating` (``stage``: read and
        annotate elsewhere)."""
        if batch_size <= 0:
            raise MapError("batch_size must be positive")
        report = annotate_map(
            self._map,
            annotator,
            batch_size=batch_size,
            progress=progress,
            workers=workers,
            redo=redo,
            stage=stage,
        )
        if self._map.store.get_meta("search.lexical") is None and not self.read_only:
            # The first annotator a map gets feeds its lexical channel (the default search
            # of every caller), until the user says otherwise with `set_lexical`.
            self.set_lexical(LexicalSpec(annotator.name))
        return report

    def put_evidence(
        self,
        annotator: str,
        version: str,
        results: Sequence[tuple[int, Sequence[EvidenceItem]]],
    ) -> int:
        """Store evidence computed elsewhere (e.g. by the evaluation's oracle) for images
        of this map, in one transaction; returns the items written."""
        with self._map.writing("store evidence"):
            self._map.store.begin()
            try:
                n = self.evidence.put(annotator, version, results)
            except BaseException:
                self._map.store.rollback()
                raise
            self._map.store.commit()
        return n

    def image_rows(self, image_ids: Sequence[int]) -> dict[int, ImageRow]:
        """Stored images by id: path relative to its data set root, the root, the place."""
        with self._map.lock:
            return self._map.store.rows_by_ids(image_ids)

    def sources(self) -> list[MapSource]:
        """The data sets this map was built from, oldest first."""
        return list_sources(self._map)

    def relocate(self, old_root: Path | str, new_root: Path | str) -> int:
        """Re-point a data set that moved; see `dlgpr_core.mapdb.sources.relocate`."""
        return relocate(self._map, old_root, new_root)

    def set_search_index(self, setting: IndexSetting, *, build: bool = True) -> IndexChoice:
        """Force the index every search of this map uses (``exact``, ``ivf``, ``hnsw``,
        ``ivfpq``), or ``auto`` to choose by size (`dlgpr_core.mapdb.choice`); with `build`,
        builds the chosen approximate index if it is missing or stale (else the next map
        build does). Returns the choice."""
        self._approx.set_setting(setting)
        if build:
            self._approx.ensure_chosen()
        return self._approx.choice()

    def search_index(self) -> IndexChoice:
        """The index searches use by default, and why (size or the user's setting)."""
        return self._approx.choice()

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
        """Build an IVF or HNSW index and report its recall@k; see `ApproxIndexes.build`."""
        return self._approx.build(
            kind, queries=queries, n_queries=n_queries, k=k, noise=noise, **params
        )

    # -- searching ----------------------------------------------------------------
    def search_images(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | Literal["exact"] | None = None,
    ) -> list[ImageHit]:
        """Top-``k`` images; see `MapSearch.search_images`. ``approximate``: None searches
        the map's chosen index (`search_index`), ``"exact"`` or a kind overrides it."""
        return self._search.search_images(
            query, encoder, k, approximate=self._index_kind(approximate)
        )

    def _index_kind(self, requested: ApproxKind | Literal["exact"] | None) -> ApproxKind | None:
        """What `MapSearch` searches: None = exact."""
        if requested is None:
            return self._approx.kind_for_search()
        return None if requested == "exact" else requested

    def search(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | Literal["exact"] | None = None,
        rerank_top: int = 50,
        lexical: LexicalSpec | Literal["map"] | None = "map",
    ) -> list[PlaceHit]:
        """Top-``k`` places, each scored by its best image (see `MapSearch.search`), and for
        a text query fused with the lexical channel over the map's evidence (`lexical`:
        the map's recorded setting by default, see `set_lexical`; None: dense only).
        ``approximate`` as in `search_images`."""
        approximate = self._index_kind(approximate)
        spec = self.lexical_spec() if lexical == "map" else lexical
        if spec is None or not isinstance(query, str):
            return self._search.search(
                query, encoder, k, approximate=approximate, rerank_top=rerank_top
            )
        pool = self._search.search(
            query, encoder, max(k, LEXICAL_POOL), approximate=approximate, rerank_top=rerank_top
        )
        index = self._lexical_index(spec)
        return fuse(pool, index.scores(query), index, spec, k)

    # -- the lexical channel ------------------------------------------------------------
    def set_lexical(self, spec: LexicalSpec | None) -> None:
        """Record how text searches of this map use its evidence (None: dense only, and
        kept so: a later annotation does not turn it back on), so every caller (the CLI,
        the robot, the evaluation) searches the same way."""
        self._map.require_writable("record the lexical setting")
        with self._map.lock:
            store = self._map.store
            store.begin()
            store.delete_meta("search.lexical")
            store.set_meta("search.lexical", json.dumps(asdict(spec) if spec else None))
            store.commit()

    # -- coverage --------------------------------------------------------------------
    def set_unseen_rates(self, rates: Mapping[str, float] | None) -> None:
        """Record how much of a place the map's views miss (`EvidenceStore.unseen_rates`;
        None: back to the shipped rates), for every caller that reads the map's evidence."""
        self._map.require_writable("record the coverage rates")
        with self._map.lock:
            store = self._map.store
            store.begin()
            try:
                self.evidence.set_unseen_rates(rates)
            except BaseException:
                store.rollback()
                raise
            store.commit()

    def lexical_spec(self) -> LexicalSpec | None:
        raw = self._map.store.get_meta("search.lexical")
        recorded = json.loads(raw) if raw else None
        return LexicalSpec(**recorded) if recorded else None

    def _lexical_index(self, spec: LexicalSpec) -> LexicalIndex:
        key = (spec.annotator, spec.min_confidence, self.evidence.generation())
        cached = self._lexical.get(key)
        if cached is None:
            with self._map.lock:
                places = [
                    str(r[0])
                    for r in self._map.store.execute(
                        "SELECT place_id FROM places ORDER BY place_id"
                    )
                ]
            cached = LexicalIndex.from_evidence(
                self.evidence, spec.annotator, places, spec.min_confidence
            )
            self._lexical = {key: cached}
        return cached

    # -- reporting ----------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counts only; cheap enough for a status topic."""
        return map_stats(self._map, self._vectors)

    def skipped(self) -> list[SkippedItem]:
        """Every input any build of this map refused, with the latest reason."""
        return map_skipped(self._map)

    def info(self) -> MapInfo:
        """Counts plus encoder, index kinds and their size per image on disk, the index
        searches use and whether the map is read-only."""
        info = map_info(self._map, self._vectors)
        choice = self._approx.choice()
        info.search_index = choice.render()
        if choice.kind != "exact" and self._approx.state(choice.kind) != "current":
            state = self._approx.state(choice.kind)
            info.search_index += (
                f"; the {choice.kind} index is {state}, so searches use exact until "
                f"`dlgpr map index --kind {choice.setting}` builds it"
            )
        info.read_only = self.read_only
        info.coverage = describe_unseen_rates(self.evidence.unseen_rates())
        spec = self.lexical_spec()
        info.lexical = (
            spec.describe()
            if spec
            else "off (dense search only; `dlgpr map lexical --annotator NAME` turns it on)"
        )
        return info
