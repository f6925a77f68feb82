"""The batch loop that turns a map's images into evidence: resumable and incremental.

Like a build: images are read in worker threads, annotated in batches, and each batch's
evidence commits with the record that its images are done, so an interrupted run resumes
where it stopped, a re-run only annotates new images, and a new annotator version (a
retrained model) re-annotates everything. An image that cannot be read is reported with its
reason and stays to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image
from tqdm import tqdm

from dlgpr_core.data.paths import ESCAPES_ROOT, resolve_inside
from dlgpr_core.mapdb.directory import MapDirectory
from dlgpr_core.mapdb.evidence import EvidenceItem, EvidenceStore
from dlgpr_core.mapdb.loading import load_image


class ImageAnnotator(Protocol):
    """What the map needs from an annotator (see `dlgpr_core.evidence` for the real ones)."""

    @property
    def name(self) -> str:
        """Evidence is stored under this name (several annotators can annotate one map)."""
        ...

    @property
    def version(self) -> str:
        """Changes whenever the annotator would say something else (new weights, prompt)."""
        ...

    def annotate(self, images: Sequence[Image.Image]) -> Sequence[list[EvidenceItem] | None]:
        """One list of items per image, in order: possibly empty (nothing seen), or None
        when the annotator failed on that image (a teacher that never replied): then the
        image stays to do and is reported."""
        ...


@dataclass
class AnnotateReport:
    annotator: str
    version: str
    annotated: int = 0
    already_done: int = 0
    items: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(image path, reason) of images that could not be read or annotated; they stay to do."""
    seconds: float = 0.0

    def render(self) -> str:
        rate = self.annotated / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"evidence {self.annotator} ({self.version}): {self.annotated} images annotated, "
            f"{self.already_done} already done, {self.items} items, {len(self.unreadable)} "
            f"unreadable in {self.seconds:.1f} s ({rate:.1f} images/s)"
        )
        return "\n".join([line, *(f"  {p}: {r}" for p, r in self.unreadable[:20])])


@dataclass
class Annotated:
    """One image's outcome from an annotation stage (here or on a remote worker)."""

    error: str | None = None
    """Why the image could not be read (`load_image`'s reason); then ``items`` is None."""
    items: list[EvidenceItem] | None = None
    """What the annotator saw; None without ``error``: the annotator failed on it."""


Job = tuple[int, Path]
"""(image id, file) to annotate."""

AnnotateStage = Callable[[Sequence[Job], int], Iterator[tuple[Sequence[Job], Sequence[Annotated]]]]
"""Reads and annotates jobs elsewhere (Ray workers, see `dlgpr_core.mapdb.distributed`):
called with every job and the batch size, yields (batch, one `Annotated` per job)."""


def annotate_map(
    map_dir: MapDirectory,
    annotator: ImageAnnotator,
    *,
    batch_size: int = 16,
    progress: bool = True,
    workers: int = 4,
    redo: bool = False,
    stage: AnnotateStage | None = None,
) -> AnnotateReport:
    """Annotates every image `annotator` has not done at its version (all with `redo`);
    ``stage`` runs the reading and annotating elsewhere (``annotator`` then only names
    the evidence and its version), the storing stays here."""
    store = EvidenceStore(map_dir.store)
    start = time.perf_counter()
    report = AnnotateReport(annotator.name, annotator.version)
    with map_dir.writing("annotate"):
        if redo:
            map_dir.store.begin()
            store.delete(annotator.name)
            map_dir.store.commit()
        todo = store.todo(annotator.name, annotator.version)
        report.already_done = len(map_dir.store.image_ids()) - len(todo)
        rows = map_dir.store.rows_by_ids(todo)
        jobs: list[Job] = []
        for i in todo:  # a stored path is data from the map file: kept inside its root
            path = resolve_inside(Path(rows[i].root), rows[i].path)
            if path is None:
                report.unreadable.append((f"{rows[i].root}/{rows[i].path}", ESCAPES_ROOT))
            else:
                jobs.append((i, path))
        bar = tqdm(
            total=len(jobs), desc=f"evidence {annotator.name}", unit="img", disable=not progress
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            if stage is None:
                outcomes = _local_stage(annotator, pool, jobs, batch_size)
            else:
                outcomes = stage(jobs, batch_size)
            for batch, results in outcomes:
                map_dir.store.begin()
                store_annotated(store, annotator, batch, results, report)
                map_dir.store.commit()
                bar.update(len(batch))
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _local_stage(
    annotator: ImageAnnotator, pool: ThreadPoolExecutor, jobs: Sequence[Job], batch_size: int
) -> Iterator[tuple[Sequence[Job], Sequence[Annotated]]]:
    """Reads a batch in worker threads, annotates what could be read."""
    for s in range(0, len(jobs), batch_size):
        batch = jobs[s : s + batch_size]
        loaded = list(pool.map(load_image, [path for _, path in batch]))
        images = [lo.image for lo in loaded if lo.image is not None]
        results = annotator.annotate(images) if images else []
        if len(results) != len(images):
            raise RuntimeError(
                f"annotator {annotator.name} returned {len(results)} results for "
                f"{len(images)} images"
            )
        found = iter(results)
        outcomes = []
        for lo in loaded:
            if lo.image is None:
                outcomes.append(Annotated(error=lo.error or "unreadable"))
            else:
                outcomes.append(Annotated(items=next(found)))
        yield batch, outcomes


def store_annotated(
    store: EvidenceStore,
    annotator: ImageAnnotator | tuple[str, str],
    batch: Sequence[Job],
    results: Sequence[Annotated],
    report: AnnotateReport,
) -> None:
    """Stores one batch's evidence (with its done-records) in the open transaction and
    reports what could not be read or annotated; those stay to do."""
    name, version = (
        annotator if isinstance(annotator, tuple) else (annotator.name, annotator.version)
    )
    pairs = list(zip(batch, results, strict=True))
    report.unreadable += [(str(path), r.error) for (_, path), r in pairs if r.error is not None]
    done = []
    for (i, path), result in pairs:
        if result.error is not None:
            continue
        if result.items is None:
            report.unreadable.append((str(path), "the annotator failed on it"))
        else:
            done.append((i, result.items))
    report.items += store.put(name, version, done)
    report.annotated += len(done)
