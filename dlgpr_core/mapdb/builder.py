"""The batch loop behind `MapDatabase.build`: plan, load, de-duplicate, encode, store.

Split from the map so the loop's bookkeeping (what to skip and why) reads in one place;
everything it asks of the map, and all persistence, goes through `BuildTarget`
(`store_batch`, `checkpoint`), which the map implements.

Loading and encoding can run elsewhere (`RemoteStage`: Ray workers, see
`dlgpr_core.mapdb.distributed`): the workers send back each item's hash, load error and
embedding, in plan order, and this loop applies the same rules to them (duplicates,
non-finite embeddings, re-encodes) as to images it loaded itself, so a distributed build
stores and refuses exactly what a local one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
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


@dataclass
class Encoded:
    """What a remote stage sends back for one `WorkItem`: the image's content hash and
    embedding, or why it could not be loaded (`load_image`'s reason, word for word)."""

    sha256: str | None
    error: str | None
    vector: np.ndarray | None = None
    fine: np.ndarray | None = None


RemoteStage = Callable[
    [Sequence["WorkItem"], int], Iterator[tuple[Sequence["WorkItem"], Sequence[Encoded]]]
]
"""Loads and encodes work items elsewhere: called with the whole plan and the batch size,
yields (batch, one `Encoded` per item) in plan order."""

Stored = Callable[[Sequence["WorkItem"], Sequence[int]], None]
"""Told each stored batch's items and their row ids, inside the build's open transaction
(a distributed build stores the batch's evidence there, to commit with its rows)."""

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
        stored: Stored | None = None,
    ) -> None:
        self.target = target
        self.stored = stored
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
                seen_paths.add(rel)  # listed twice: refused whether stored before or not
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

    def run(
        self, scan: DatasetScan, checkpoint_seconds: float, remote: RemoteStage | None = None
    ) -> None:
        """Plan, then load + encode each batch (here, or in ``remote``) and store it,
        committing every ``checkpoint_seconds``."""
        from tqdm import tqdm

        work = self.plan(scan)
        last_checkpoint = time.monotonic()
        with (
            ThreadPoolExecutor(self.workers) as pool,
            tqdm(total=len(work), unit="img", desc="encoding", disable=not self.progress) as bar,
        ):
            batches: Iterator[tuple[Sequence[WorkItem], Sequence[Encoded] | None]]
            if remote is None:
                batches = ((batch, None) for batch in chunks(work, self.batch_size))
            else:
                batches = iter(remote(work, self.batch_size))
            for batch, encoded in batches:
                if encoded is None:
                    loaded = list(pool.map(lambda item: load_image(item.path), batch))
                    self.encode_and_store(batch, loaded)
                else:
                    self.store_encoded(batch, encoded)
                bar.update(len(batch))
                if time.monotonic() - last_checkpoint >= checkpoint_seconds:
                    self.target.checkpoint()
                    last_checkpoint = time.monotonic()

    def accept(self, item: WorkItem, sha256: str | None, error: str | None) -> bool:
        """Apply the skip rules to one loaded file; True if it should be encoded."""
        source = item.path.as_posix()
        if error is not None or sha256 is None:
            reason = error or "unreadable file"
            if item.row_id is not None:
                reason = (
                    f"cannot re-encode stored image ({reason}); it stays unsearchable; "
                    + RELOCATE_HINT
                )
            self.skip(source, reason)
            return False
        if item.row_id is not None:
            return True
        earlier = self.seen_sha.get(sha256) or self.target.path_of_sha(sha256)
        if earlier is not None:
            self.skip(source, f"duplicate image: same content as {earlier}")
            return False
        self.seen_sha[sha256] = source
        return True

    def encode_and_store(self, batch: Sequence[WorkItem], loaded: Sequence[LoadedImage]) -> None:
        """Encode the accepted images of a batch loaded here, then store them."""
        keep = [
            (item, ld)
            for item, ld in zip(batch, loaded, strict=True)
            if self.accept(item, ld.sha256, _load_error(ld))
        ]
        if not keep:
            return
        images = [ld.image for _, ld in keep if ld.image is not None]
        fine: np.ndarray | None = None
        if self.target.fine_shape is not None and isinstance(self.encoder, FineEncoder):
            raw, fine = self.encoder.encode_images_with_fine(images)
            vectors = np.asarray(raw, dtype=np.float32)
        else:
            vectors = np.asarray(self.encoder.encode_images(images), dtype=np.float32)
        self.store([(item, str(ld.sha256)) for item, ld in keep], vectors, fine)

    def store_encoded(self, batch: Sequence[WorkItem], encoded: Sequence[Encoded]) -> None:
        """Store a batch loaded and encoded elsewhere, under the same rules as `run`'s own:
        a refused image's embedding is simply dropped."""
        keep = [
            (item, enc)
            for item, enc in zip(batch, encoded, strict=True)
            if self.accept(item, enc.sha256, enc.error)
        ]
        if not keep:
            return
        missing = [item.path.as_posix() for item, enc in keep if enc.vector is None]
        if missing:
            raise MapError(f"the remote stage sent no embedding for {missing[0]}")
        vectors = np.stack([np.asarray(enc.vector, dtype=np.float32) for _, enc in keep])
        fine = None
        if self.target.fine_shape is not None:
            if any(enc.fine is None for _, enc in keep):
                raise MapError("the remote stage sent no fine features for a fine map")
            fine = np.stack([np.asarray(enc.fine) for _, enc in keep])
        self.store([(item, str(enc.sha256)) for item, enc in keep], vectors, fine)

    def store(
        self, keep: Sequence[tuple[WorkItem, str]], vectors: np.ndarray, fine: np.ndarray | None
    ) -> None:
        """Check the encoder's output for accepted images, then store the finite ones."""
        n, shape = len(keep), self.target.fine_shape
        if fine is not None:
            if shape is None or fine.shape != (n, *shape):
                raise MapError(
                    f"encoder {self.encoder.fingerprint} returned fine features of shape "
                    f"{fine.shape}; expected ({n}, {shape})"
                )
            fine = np.asarray(fine, dtype=np.float16)
        if vectors.shape != (n, self.target.dim):
            raise MapError(
                f"encoder {self.encoder.fingerprint} returned shape {vectors.shape} for "
                f"{n} images; expected ({n}, {self.target.dim})"
            )
        finite = [bool(np.isfinite(v).all()) for v in vectors]
        if fine is not None:  # float16 overflows to inf: such features cannot re-rank
            finite = [ok and bool(np.isfinite(f).all()) for ok, f in zip(finite, fine, strict=True)]
        rows: list[BatchRow] = []
        items: list[WorkItem] = []
        for (item, sha), ok in zip(keep, finite, strict=True):
            if not ok:
                self.skip(item.path.as_posix(), "encoder produced a non-finite embedding")
                continue
            rows.append(_row(item, sha, self.root_key, self.source_kind))
            items.append(item)
        if not rows:
            return
        mask = np.asarray(finite, dtype=bool)
        ids = self.target.store_batch(
            rows, l2_normalise(vectors[mask]), None if fine is None else fine[mask]
        )
        self.report.reencoded += sum(1 for row in rows if row["id"] is not None)
        self.report.added += sum(1 for row in rows if row["id"] is None)
        if self.stored is not None:
            self.stored(items, ids)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_error(loaded: LoadedImage) -> str | None:
    """Why a file loaded here cannot be used (None: it can)."""
    if loaded.error is None and (loaded.image is None or loaded.sha256 is None):
        return "unreadable file"
    return loaded.error


def _row(item: WorkItem, sha256: str, source_root: str, source_kind: str | None) -> BatchRow:
    """A row for `BuildTarget.store_batch`; its source is created there on first use."""
    if item.record is None:
        return {"id": item.row_id}
    record = item.record
    return {
        "id": None,
        "source_root": source_root,
        "source_kind": source_kind,
        "path": item.rel,
        "sha256": sha256,
        "place_id": record.place_id,
        "city": record.city,
        "lat": record.lat,
        "lon": record.lon,
        "heading": record.heading,
        "date": record.date,
    }
