"""The map's exact vector index in memory, and how it stays consistent with SQLite.

Crash consistency rests on one ordering rule: the FAISS index is written (atomically)
*before* the SQLite transaction holding its rows commits. After a crash the index can
therefore only hold ids SQLite does not know (dropped on open), and SQLite can only hold
rows the index lacks if the index file was lost (re-encoded by the next build). Row ids
are the FAISS ids, so the two never need a mapping table.

A map built with a `FineEncoder` (CMPL) also keeps each image's fine features in SQLite
(``fine_features``, written with the image row). Rows whose fine features are missing are
treated like rows missing their vector: dropped from the in-memory index and re-encoded by
the next build.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.directory import BUILD_HINT, MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import EXACT_FILE, ExactIndex
from dlgpr_core.mapdb.store import utc_now
from dlgpr_core.mapdb.target import BatchRow

_NOT_IMAGE_COLUMNS = frozenset({"id", "source_root", "source_kind"})
"""Keys of a `BatchRow` that are not `MapStore.insert_image` arguments."""


class MapVectors:
    """The exact index plus the bookkeeping between a batch's add and its commit.

    ``exact`` is replaced by `reload`: read it through this object, never keep it.
    """

    def __init__(self, map_dir: MapDirectory) -> None:
        self.map = map_dir
        self.exact = ExactIndex(map_dir.dim)
        self._pending: set[int] = set()
        """Stored rows without a vector in the index: the next build re-encodes them."""
        self._index_dirty = False
        self._uncommitted: list[int] = []
        self._touched_places: set[str] = set()

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def pending_ids(self) -> list[int]:
        """Rows to re-encode, in id order."""
        return sorted(self._pending)

    def reload(self) -> None:
        """Load the index and reconcile it with SQLite (see the module docstring)."""
        path = self.map.directory / EXACT_FILE
        dim = self.map.dim
        if path.exists():
            try:
                self.exact = ExactIndex.load(path, dim)
            except (RuntimeError, ValueError) as exc:
                raise MapError(
                    f"{path} is unreadable ({exc}); delete it and run `{BUILD_HINT}` again "
                    "to re-encode every stored image"
                ) from exc
        else:
            self.exact = ExactIndex(dim)
        store = self.map.store
        index_ids = set(self.exact.ids().tolist())
        db_ids = set(store.image_ids())
        orphans = np.fromiter(index_ids - db_ids, dtype=np.int64)
        self._index_dirty = self.exact.remove(orphans) > 0
        if self.map.fine_shape is not None:
            # A vector without its fine features cannot be re-ranked: re-encode the image.
            lacking = set(store.ids_without_fine()) & index_ids
            if lacking:
                self.exact.remove(np.fromiter(lacking, dtype=np.int64))
                self._index_dirty = True
                index_ids -= lacking
        self._pending = db_ids - index_ids

    def store_batch(
        self, rows: Sequence[BatchRow], vectors: np.ndarray, fine: np.ndarray | None = None
    ) -> list[int]:
        """Insert rows (or reuse ``id`` for re-encoded ones) and add their vectors; returns
        the rows' ids in order.

        A savepoint makes the batch all-or-nothing in SQLite; the FAISS add comes last,
        so a failure before it leaves nothing to undo in the index. Nothing commits until
        `checkpoint`.
        """
        store = self.map.store
        store.begin()
        store.savepoint("batch")
        try:
            ids = []
            sources: dict[str, int] = {}
            for row in rows:
                if row.get("id") is not None:
                    ids.append(int(row["id"]))
                    continue
                root = str(row["source_root"])
                if root not in sources:
                    sources[root] = store.ensure_source(root, row["source_kind"], utc_now())
                fields = {k: v for k, v in row.items() if k not in _NOT_IMAGE_COLUMNS}
                ids.append(store.insert_image(source_id=sources[root], **fields))
                self._touched_places.add(str(row["place_id"]))
            if fine is not None:
                f16 = np.ascontiguousarray(fine, dtype=np.float16)
                store.put_fine((i, f16[n].tobytes()) for n, i in enumerate(ids))
            self.exact.add(vectors, np.asarray(ids, dtype=np.int64))
        except BaseException:
            store.rollback_to("batch")
            raise
        store.release("batch")
        self._uncommitted.extend(ids)
        self._index_dirty = True
        return ids

    def checkpoint(self, skipped: Sequence[SkippedItem] = ()) -> None:
        """Index to disk first, then commit: the ordering the module docstring relies on.

        Also commits whatever else the build left in the open transaction (place centres,
        the bumped generation, refused inputs, a source's last build time).
        """
        store = self.map.store
        if self._index_dirty or self._uncommitted:
            store.begin()
            store.recentre_places(sorted(self._touched_places))
            generation = int(store.get_meta("generation") or 0) + 1
            store.set_meta("generation", str(generation))
            self.exact.save(self.map.directory / EXACT_FILE)
        if skipped:
            store.begin()
            store.record_skipped(skipped)
        store.commit()
        self._pending.difference_update(self._uncommitted)
        self._uncommitted.clear()
        self._touched_places.clear()
        self._index_dirty = False

    def checkpoint_or_rollback(self, skipped: Sequence[SkippedItem]) -> None:
        """Keep finished batches of a failing build; if even that fails, undo cleanly."""
        try:
            self.checkpoint(skipped)
        except Exception:
            self.map.store.rollback()
            self.exact.remove(np.asarray(self._uncommitted, dtype=np.int64))
            self._uncommitted.clear()
            self._touched_places.clear()
            self.reload()
