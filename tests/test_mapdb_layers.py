"""The map's layers: the builder works against `BuildTarget` alone, and no import cycle
exists inside `dlgpr_core.mapdb` (TYPE_CHECKING imports included)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from test_mapdb import HistogramEncoder, make_dataset

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.builder import Builder
from dlgpr_core.mapdb.report import BuildReport
from dlgpr_core.mapdb.store import ImageRow
from dlgpr_core.mapdb.target import BatchRow, BuildTarget


class MemoryTarget(BuildTarget):
    """A map that keeps batches in lists: enough for the builder, no SQLite or FAISS."""

    dim = 48
    fine_shape = None

    def __init__(self) -> None:
        self.rows: list[BatchRow] = []
        self.checkpoints = 0

    def pending_rows(self) -> list[ImageRow]:
        return []

    def source_id(self, root: str) -> int | None:
        return 1 if any(r["source_root"] == root for r in self.rows) else None

    def touch_source(self, source_id: int, kind: str | None) -> None:
        pass

    def path_exists(self, source_id: int, path: str) -> bool:
        return any(r["path"] == path for r in self.rows)

    def path_of_sha(self, sha256: str) -> str | None:
        return next((r["path"] for r in self.rows if r["sha256"] == sha256), None)

    def store_batch(
        self, rows: Sequence[BatchRow], vectors: np.ndarray, fine: np.ndarray | None = None
    ) -> list[int]:
        assert vectors.shape == (len(rows), self.dim) and fine is None
        self.rows.extend(rows)
        return list(range(len(self.rows) - len(rows) + 1, len(self.rows) + 1))

    def checkpoint(self, skipped: Sequence[SkippedItem] = ()) -> None:
        self.checkpoints += 1

    def checkpoint_or_rollback(self, skipped: Sequence[SkippedItem]) -> None:
        self.checkpoints += 1


def test_builder_needs_only_the_build_target(tmp_path: Path) -> None:
    csv_path = make_dataset(tmp_path / "ds", places=2, per_place=2)
    target, report = MemoryTarget(), BuildReport()
    Builder(target, HistogramEncoder(), report, 3, False, 1, "csv").run(scan_csv(csv_path), 0.0)
    assert report.added == 4 and len(target.rows) == 4
    assert {r["source_kind"] for r in target.rows} == {"csv"}
    assert target.checkpoints == 2  # one per batch with checkpoint_seconds=0
    again = BuildReport()
    Builder(target, HistogramEncoder(), again, 3, False, 1).run(scan_csv(csv_path), 60.0)
    assert (again.added, again.already_present) == (0, 4)


def test_no_import_cycle_inside_mapdb() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("dlgpr_core")
    mapdb = sorted(m for m in graph.modules if m.startswith("dlgpr_core.mapdb"))
    cycles = [
        (a, b)
        for a in mapdb
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []
    assert not graph.chain_exists(
        importer="dlgpr_core.mapdb.builder", imported="dlgpr_core.mapdb.database"
    )
