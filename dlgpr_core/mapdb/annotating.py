"""The batch loop that turns a map's images into evidence: resumable and incremental.

Like a build: images are read in worker threads, annotated in batches, and each batch's
evidence commits with the record that its images are done, so an interrupted run resumes
where it stopped, a re-run only annotates new images, and a new annotator version (a
retrained model) re-annotates everything. An image that cannot be read is reported with its
reason and stays to do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image
from tqdm import tqdm

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


def annotate_map(
    map_dir: MapDirectory,
    annotator: ImageAnnotator,
    *,
    batch_size: int = 16,
    progress: bool = True,
    workers: int = 4,
    redo: bool = False,
) -> AnnotateReport:
    """Annotates every image `annotator` has not done at its version (all with `redo`)."""
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
        bar = tqdm(
            total=len(todo), desc=f"evidence {annotator.name}", unit="img", disable=not progress
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for s in range(0, len(todo), batch_size):
                batch = [(i, Path(rows[i].root) / rows[i].path) for i in todo[s : s + batch_size]]
                _annotate_batch(map_dir, store, annotator, pool, batch, report)
                bar.update(len(batch))
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _annotate_batch(
    map_dir: MapDirectory,
    store: EvidenceStore,
    annotator: ImageAnnotator,
    pool: ThreadPoolExecutor,
    batch: Sequence[tuple[int, Path]],
    report: AnnotateReport,
) -> None:
    """Reads, annotates and commits one batch (with its done-records)."""
    loaded = list(pool.map(load_image, [path for _, path in batch]))
    ok = [(i, path, lo.image) for (i, path), lo in zip(batch, loaded, strict=True) if lo.image]
    report.unreadable += [
        (str(path), lo.error or "unreadable")
        for (_, path), lo in zip(batch, loaded, strict=True)
        if lo.image is None
    ]
    results = annotator.annotate([img for _, _, img in ok]) if ok else []
    if len(results) != len(ok):
        raise RuntimeError(
            f"annotator {annotator.name} returned {len(results)} results for {len(ok)} images"
        )
    done = []
    for (i, path, _), items in zip(ok, results, strict=True):
        if items is None:
            report.unreadable.append((str(path), "the annotator failed on it"))
        else:
            done.append((i, items))
    map_dir.store.begin()
    report.items += store.put(annotator.name, annotator.version, done)
    map_dir.store.commit()
    report.annotated += len(done)
