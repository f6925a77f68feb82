"""The batch loop behind `MapDatabase.build`: plan, load, de-duplicate, encode, store.

Split from the map so the loop's bookkeeping (what to skip and why) reads in one place;
everything it asks of the map, and all persistence, goes through `BuildTarget`
(`store_batch`, `checkpoint`), which the map implements.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlgpr_core.data.paths import ESCAPES_ROOT, resolve_inside
from dlgpr_core.data.records import DatasetScan, ImageRecord, SkippedItem
from dlgpr_core.encoders.base import Encoder, FineEncoder, l2_normalise
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.loading import LoadedImage, load_image
from dlgpr_core.mapdb.report import BuildReport
from dlgpr_core.mapdb.target import BatchRow, BuildTarget


@dataclass(frozen=True)
class WorkItem:
    """An image to encode: a new record, or a stored row (``row_id``) missing its vector."""

    path: Path
    """The file to read on this machine (absolute, symlinks resolved)."""
    record: ImageRecord | None = None
    row_id: int | None = None
    rel: str = ""
    """For a new record: ``path`` relative to the data set root, POSIX, as stored."""


RELOCATE_HINT = (
    "if the data set moved, re-point the map with `dlgpr map relocate OLD NEW --map DIR` "
    "and build again"
)


def chunks(items: Sequence[WorkItem], size: int) -> Iterator[Sequence[WorkItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Builder:
    """One build run; holds the per-run de-duplication state."""

    def __init__(
        self,
        target: BuildTarget,
        encoder: Encoder,
        report: BuildReport,
        batch_size: int,
        progress: bool,
        workers: int,
        source_kind: str | None = None,
    ) -> None:
        self.target = target
        self.encoder = encoder
        self.report = report
        self.batch_size = batch_size
        self.progress = progress
        self.workers = max(1, workers)
        self.source_kind = source_kind
        self.root_key = ""
        """The scan's root as ``sources.root`` spells it; set by `plan`."""
        self.seen_sha: dict[str, str] = {}

    def skip(self, source: str, reason: str) -> None:
        self.report.skipped.append(SkippedItem(source, reason))

    def plan(self, scan: DatasetScan) -> list[WorkItem]:
        """Re-encodes first, then new records; stored paths are counted, never read.

        A record is "already present" when its (data set root, relative path) is stored;
        the root is resolved like `resolve_inside` resolves it, so both agree on the
        relative path whatever symlinks lead to the data set.
        """
        target = self.target
        work = self.plan_reencodes()
        try:
            root = scan.root.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise MapError(f"cannot resolve the data set root {scan.root}: {exc}") from exc
        self.root_key = root.as_posix()
        source_id = target.source_id(self.root_key)
        if source_id is not None and scan.records:
            target.touch_source(source_id, self.source_kind)
        seen_paths: set[str] = set()
        for record in scan.records:
            resolved = resolve_inside(scan.root, record.path)
            if resolved is None:
                self.skip(record.path, ESCAPES_ROOT)
                continue
            key = resolved.as_posix()
            rel = resolved.relative_to(root).as_posix()
            if not key.isprintable() or not _utf8(key):
                self.skip(record.path, "path is not printable UTF-8")
            elif rel in seen_paths:
                self.skip(key, "duplicate path: listed twice in the data set")
            elif source_id is not None and target.path_exists(source_id, rel):
                self.report.already_present += 1
            else:
                seen_paths.add(rel)
                work.append(WorkItem(resolved, record=record, rel=rel))
        return work

    def plan_reencodes(self) -> list[WorkItem]:
        """Stored rows without a vector, read from their source's (possibly relocated) root.

        A missing root is reported once per image with the way out, instead of as many
        opaque "unreadable file" errors.
        """
        work: list[WorkItem] = []
        for row in self.target.pending_rows():
            shown = f"{row.root.rstrip('/')}/{row.path}"
            root = Path(row.root)
            if not root.is_dir():
                self.skip(
                    shown,
                    f"cannot re-encode stored image: data set root {row.root} not found; "
                    + RELOCATE_HINT,
                )
                continue
            path = resolve_inside(root, row.path)
            if path is None:
                self.skip(shown, ESCAPES_ROOT)
                continue
            work.append(WorkItem(path, row_id=row.id))
        return work

    def run(self, scan: DatasetScan, checkpoint_seconds: float) -> None:
        from tqdm import tqdm

        work = self.plan(scan)
        last_checkpoint = time.monotonic()
        with (
            ThreadPoolExecutor(self.workers) as pool,
            tqdm(total=len(work), unit="img", desc="encoding", disable=not self.progress) as bar,
        ):
            for batch in chunks(work, self.batch_size):
                loaded = list(pool.map(lambda item: load_image(item.path), batch))
                self.encode_and_store(batch, loaded)
                bar.update(len(batch))
                if time.monotonic() - last_checkpoint >= checkpoint_seconds:
                    self.target.checkpoint()
                    last_checkpoint = time.monotonic()

    def accept(self, item: WorkItem, loaded: LoadedImage) -> bool:
        """Apply the skip rules to one loaded file; True if it should be encoded."""
        source = item.path.as_posix()
        if loaded.error is not None or loaded.image is None or loaded.sha256 is None:
            reason = loaded.error or "unreadable file"
            if item.row_id is not None:
                reason = (
                    f"cannot re-encode stored image ({reason}); it stays unsearchable; "
                    + RELOCATE_HINT
                )
            self.skip(source, reason)
            return False
        if item.row_id is not None:
            return True
        earlier = self.seen_sha.get(loaded.sha256) or self.target.path_of_sha(loaded.sha256)
        if earlier is not None:
            self.skip(source, f"duplicate image: same content as {earlier}")
            return False
        self.seen_sha[loaded.sha256] = source
        return True

    def encode_and_store(self, batch: Sequence[WorkItem], loaded: Sequence[LoadedImage]) -> None:
        keep = [(item, ld) for item, ld in zip(batch, loaded, strict=True) if self.accept(item, ld)]
        if not keep:
            return
        images = [ld.image for _, ld in keep if ld.image is not None]
        fine: np.ndarray | None = None
        shape = self.target.fine_shape
        if shape is not None and isinstance(self.encoder, FineEncoder):
            raw, fine = self.encoder.encode_images_with_fine(images)
            vectors = np.asarray(raw, dtype=np.float32)
            if fine.shape != (len(images), *shape):
                raise MapError(
                    f"encoder {self.encoder.fingerprint} returned fine features of shape "
                    f"{fine.shape}; expected ({len(images)}, {shape})"
                )
            fine = np.asarray(fine, dtype=np.float16)
        else:
            vectors = np.asarray(self.encoder.encode_images(images), dtype=np.float32)
        if vectors.shape != (len(images), self.target.dim):
            raise MapError(
                f"encoder {self.encoder.fingerprint} returned shape {vectors.shape} for "
                f"{len(images)} images; expected ({len(images)}, {self.target.dim})"
            )
        finite = [bool(np.isfinite(v).all()) for v in vectors]
        if fine is not None:  # float16 overflows to inf: such features cannot re-rank
            finite = [ok and bool(np.isfinite(f).all()) for ok, f in zip(finite, fine, strict=True)]
        rows: list[BatchRow] = []
        for (item, ld), ok in zip(keep, finite, strict=True):
            if not ok:
                self.skip(item.path.as_posix(), "encoder produced a non-finite embedding")
                continue
            rows.append(_row(item, ld, self.root_key, self.source_kind))
        if not rows:
            return
        mask = np.asarray(finite, dtype=bool)
        self.target.store_batch(
            rows, l2_normalise(vectors[mask]), None if fine is None else fine[mask]
        )
        self.report.reencoded += sum(1 for row in rows if row["id"] is not None)
        self.report.added += sum(1 for row in rows if row["id"] is None)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _row(
    item: WorkItem, loaded: LoadedImage, source_root: str, source_kind: str | None
) -> BatchRow:
    """A row for `BuildTarget.store_batch`; its source is created there on first use."""
    if item.record is None:
        return {"id": item.row_id}
    record = item.record
    return {
        "id": None,
        "source_root": source_root,
        "source_kind": source_kind,
        "path": item.rel,
        "sha256": loaded.sha256,
        "place_id": record.place_id,
        "city": record.city,
        "lat": record.lat,
        "lon": record.lon,
        "heading": record.heading,
        "date": record.date,
    }
