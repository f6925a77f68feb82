"""What a build needs from the map it writes to, and nothing more.

The builder (`dlgpr_core.mapdb.builder`) depends on this interface only, so the batch
loop can be read, tested and changed without the map's storage internals, and the map's
modules never import the builder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.store import ImageRow

BatchRow = dict[str, Any]
"""One image for `BuildTarget.store_batch`: ``{"id": row_id}`` for a stored row being
re-encoded, else ``id`` None plus ``source_root`` (the data set root as ``sources.root``
spells it; the source is created on first use), ``source_kind`` and the image columns
``path`` (relative to the root), ``sha256``, ``place_id``, ``city``, ``lat``, ``lon``,
``heading``, ``date``."""


class BuildTarget(Protocol):
    """The map as a build sees it: lookups the planner needs, then batched writes.

    Writes join one open SQLite transaction that only `checkpoint` commits, after the
    index holding their vectors is on disk (see `dlgpr_core.mapdb.vectors`).
    """

    @property
    def dim(self) -> int:
        """Embedding dimension every stored vector must have."""
        ...

    @property
    def fine_shape(self) -> tuple[int, int, int] | None:
        """Shape of one image's fine features, where the map stores them."""
        ...

    def pending_rows(self) -> list[ImageRow]:
        """Stored rows without a vector (the index file was lost): re-encode these first."""
        ...

    def source_id(self, root: str) -> int | None:
        """The id of the data set recorded at ``root``, None if no image came from it yet."""
        ...

    def touch_source(self, source_id: int, kind: str | None) -> None:
        """Record that this build scanned the source; commits with the next checkpoint."""
        ...

    def path_exists(self, source_id: int, path: str) -> bool:
        """Whether the image at ``path`` (relative to the source's root) is stored."""
        ...

    def path_of_sha(self, sha256: str) -> str | None:
        """Where an image with this content is stored (root/path), for duplicate reports."""
        ...

    def store_batch(
        self, rows: Sequence[BatchRow], vectors: np.ndarray, fine: np.ndarray | None = None
    ) -> list[int]:
        """Store one batch all-or-nothing: rows, their fine features, their vectors;
        returns the rows' ids in order."""
        ...

    def checkpoint(self, skipped: Sequence[SkippedItem] = ()) -> None:
        """Make every stored batch (and ``skipped``) durable: index first, then commit."""
        ...

    def checkpoint_or_rollback(self, skipped: Sequence[SkippedItem]) -> None:
        """For a failing build: keep finished batches, or undo them all if that fails."""
        ...
