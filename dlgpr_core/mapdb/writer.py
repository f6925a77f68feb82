"""The map's implementation of `BuildTarget`: the one door a build writes through."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.directory import FineShape, MapDirectory
from dlgpr_core.mapdb.store import ImageRow, utc_now
from dlgpr_core.mapdb.target import BatchRow, BuildTarget
from dlgpr_core.mapdb.vectors import MapVectors


class MapWriter(BuildTarget):
    """Lookups answered from the map's SQLite store, writes passed to `MapVectors`.

    Callers hold the map's writer lock (`MapDirectory.writing`) around a build; tests and
    tools that fill a map with synthetic vectors may use it directly.
    """

    def __init__(self, map_dir: MapDirectory, vectors: MapVectors) -> None:
        self.map = map_dir
        self.vectors = vectors

    @property
    def dim(self) -> int:
        return self.map.dim

    @property
    def fine_shape(self) -> FineShape | None:
        return self.map.fine_shape

    def pending_rows(self) -> list[ImageRow]:
        return list(self.map.store.rows_by_ids(self.vectors.pending_ids()).values())

    def source_id(self, root: str) -> int | None:
        return self.map.store.source_id(root)

    def touch_source(self, source_id: int, kind: str | None) -> None:
        self.map.store.begin()  # committed with the build's first checkpoint
        self.map.store.touch_source(source_id, kind, utc_now())

    def path_exists(self, source_id: int, path: str) -> bool:
        return self.map.store.path_exists(source_id, path)

    def path_of_sha(self, sha256: str) -> str | None:
        return self.map.store.path_of_sha(sha256)

    def store_batch(
        self, rows: Sequence[BatchRow], vectors: np.ndarray, fine: np.ndarray | None = None
    ) -> list[int]:
        return self.vectors.store_batch(rows, vectors, fine)

    def checkpoint(self, skipped: Sequence[SkippedItem] = ()) -> None:
        self.vectors.checkpoint(skipped)

    def checkpoint_or_rollback(self, skipped: Sequence[SkippedItem]) -> None:
        self.vectors.checkpoint_or_rollback(skipped)
