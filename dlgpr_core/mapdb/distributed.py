"""Map builds on Ray Data: image decoding, encoding and evidence annotation on workers.

A city map is millions of images; one process encodes ~24 a second on two cores. Ray Data
(an existing distributed engine: a local cluster here, many machines with a GPU each in a
city build) shards the expensive part over a pool of actors, each loading the encoder (and
the annotator) once. Everything that decides what the map holds stays in this process, in
the same code a local build runs: the plan (already stored, re-encodes, paths escaping the
root), the refusals (unreadable, corrupt, duplicate, non-finite), the storage order, the
checkpoints and the single-writer lock (`dlgpr_core.mapdb.builder`, `annotating`). Workers
only send back each image's content hash, load error, embedding and evidence, in plan order
(Ray Data's ``preserve_order``), so a Ray-built map has the ids, vectors (to float
tolerance: batches differ), evidence and refused inputs of a local build, and resumes the
same way after an interruption.

Evidence of the new images is annotated by the workers in the same pass (one decode per
image) and committed with their rows; images still lacking evidence at the annotator's
version (built earlier, or the annotator failed) are annotated in a second Ray pass.

Workers read the images at the paths this process plans with: on several machines the data
set must be mounted at the same path on each (a shared file system).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlgpr_core.data.records import DatasetScan
from dlgpr_core.encoders.base import Encoder, FineEncoder
from dlgpr_core.mapdb.annotating import Annotated, AnnotateReport, ImageAnnotator, Job
from dlgpr_core.mapdb.builder import Encoded, WorkItem
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.evidence import Box, EvidenceItem
from dlgpr_core.mapdb.loading import load_image
from dlgpr_core.mapdb.report import BuildReport

EncoderFactory = Callable[[], Encoder]
"""Builds the map's encoder on a worker (pickled to each; a module-level function or a
`functools.partial` of one, e.g. ``partial(load_encoder, "dlgpr-lite", None)``)."""
AnnotatorFactory = Callable[[Encoder], ImageAnnotator]
"""Builds the annotator on a worker from the worker's encoder."""

LOCAL = "local"


@dataclass(frozen=True)
class RaySettings:
    """Where and on how many workers a build runs."""

    address: str = LOCAL
    """``local``: start a local Ray cluster of `workers` CPUs for this build (and stop it
    after); anything else is passed to ``ray.init(address=...)`` (``auto``, ``ray://...``).
    A Ray already initialised in this process is used as it is."""
    workers: int = 2
    """Actors, each holding one encoder (and annotator)."""
    gpus_per_worker: float | None = None
    """None: share the cluster's GPUs among the workers (at most one each), none on a CPU
    cluster; 0 forces CPU."""


@dataclass
class RayBuildReport:
    """A Ray build's map report, its evidence report, and the workers it ran on."""

    build: BuildReport
    evidence: AnnotateReport | None
    workers: int
    gpus_per_worker: float
    seconds: float = 0.0

    def render(self) -> str:
        where = f"{self.workers} Ray workers" + (
            f" ({self.gpus_per_worker:g} GPU each)" if self.gpus_per_worker else " (CPU)"
        )
        lines = [f"built on {where} in {self.seconds:.1f} s", self.build.render()]
        if self.evidence is not None:
            lines.append(self.evidence.render())
        return "\n".join(lines)


class MapWorker:
    """One Ray actor: loads the encoder (and annotator) once, then decodes, encodes and
    annotates batches of image paths."""

    def __init__(
        self,
        encoder_factory: EncoderFactory,
        annotator_factory: AnnotatorFactory | None,
        fingerprint: str,
        encode: bool,
        fine: bool,
    ) -> None:
        self.encoder = encoder_factory()
        if self.encoder.fingerprint != fingerprint:
            raise MapError(
                f"a Ray worker built encoder {self.encoder.fingerprint}, the map needs "
                f"{fingerprint}: give every machine the same encoder weights"
            )
        self.annotator = annotator_factory(self.encoder) if annotator_factory else None
        self.encode = encode
        self.fine = fine

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        loaded = [load_image(Path(str(p))) for p in batch["path"]]
        ok = [i for i, lo in enumerate(loaded) if lo.image is not None]
        images = [lo.image for lo in loaded if lo.image is not None]
        n = len(loaded)
        out: dict[str, Any] = {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "sha256": np.asarray([lo.sha256 or "" for lo in loaded], dtype=object),
            "error": np.asarray([lo.error or "" for lo in loaded], dtype=object),
        }
        if self.encode:
            vectors = np.zeros((n, self.encoder.dim), dtype=np.float32)
            fine = None
            if images and self.fine and isinstance(self.encoder, FineEncoder):
                raw, got = self.encoder.encode_images_with_fine(images)
                vectors[ok] = np.asarray(raw, dtype=np.float32)
                fine = np.zeros((n, *got.shape[1:]), dtype=np.float16)
                fine[ok] = np.asarray(got, dtype=np.float16)
            elif images:
                vectors[ok] = np.asarray(self.encoder.encode_images(images), dtype=np.float32)
            out["vector"] = vectors
            if self.fine:
                out["fine"] = fine if fine is not None else np.zeros((n, 1), dtype=np.float16)
        evidence = [""] * n
        if self.annotator is not None and images:
            results = list(self.annotator.annotate(images))
            if len(results) != len(images):
                raise RuntimeError(
                    f"annotator {self.annotator.name} returned {len(results)} results for "
                    f"{len(images)} images"
                )
            for i, items in zip(ok, results, strict=True):
                evidence[i] = _dump(items)
        out["evidence"] = np.asarray(evidence, dtype=object)
        return out


def _dump(items: Sequence[EvidenceItem] | None) -> str:
    """JSON for one image's evidence ("null": the annotator failed on it)."""
    if items is None:
        return "null"
    return json.dumps(
        [[it.phrase, it.confidence, it.category, it.attribute, it.value, it.bbox] for it in items]
    )


def _load(text: str) -> list[EvidenceItem] | None:
    raw = json.loads(text)
    if raw is None:
        return None
    return [
        EvidenceItem(p, float(c), cat, attr, val, None if box is None else _box(box))
        for p, c, cat, attr, val, box in raw
    ]


def _box(values: Sequence[int]) -> Box:
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[float]:
    """Ray for one build; yields the GPUs each worker gets. Starts (and stops) a local
    cluster unless Ray is already initialised here."""
    try:
        import ray
    except ImportError as exc:
        raise MapError(
            "a Ray build needs Ray Data: pip install 'dlgpr[scale]' (ray[data])"
        ) from exc
    if settings.workers < 1:
        raise MapError("a Ray build needs at least one worker")
    started = False
    if not ray.is_initialized():
        if settings.address == LOCAL:
            ray.init(num_cpus=settings.workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=settings.address, log_to_driver=False)
        started = True
    try:
        gpus = settings.gpus_per_worker
        if gpus is None:
            available = float(ray.cluster_resources().get("GPU", 0.0))
            gpus = min(1.0, available / settings.workers) if available else 0.0
        yield gpus
    finally:
        if started:
            ray.shutdown()


class RayStages:
    """The remote stages a build and an annotation run hand to the map (`RemoteStage`,
    `AnnotateStage`), over one actor pool configuration."""

    def __init__(
        self,
        settings: RaySettings,
        gpus: float,
        encoder_factory: EncoderFactory,
        annotator_factory: AnnotatorFactory | None,
        fingerprint: str,
        fine: bool,
    ) -> None:
        self.settings = settings
        self.gpus = gpus
        self.encoder_factory = encoder_factory
        self.annotator_factory = annotator_factory
        self.fingerprint = fingerprint
        self.fine = fine
        self.evidence: dict[int, list[EvidenceItem] | None] = {}
        """Plan position -> the evidence its worker annotated (build pass), until stored."""
        self.positions: dict[int, int] = {}
        """id() of each planned `WorkItem` -> its plan position."""

    def _run(
        self, paths: Sequence[str], batch_size: int, encode: bool
    ) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        """Ray Data over ``paths`` in order; yields (plan positions, worker output)."""
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        if not paths:
            return
        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # results in plan order
        context.enable_progress_bars = False
        rows = [{"index": i, "path": p} for i, p in enumerate(paths)]
        data = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
        mapped = data.map_batches(
            MapWorker,
            fn_constructor_kwargs={
                "encoder_factory": self.encoder_factory,
                "annotator_factory": self.annotator_factory,
                "fingerprint": self.fingerprint,
                "encode": encode,
                "fine": self.fine,
            },
            batch_size=batch_size,
            compute=ActorPoolStrategy(size=self.settings.workers),
            num_cpus=1,
            num_gpus=self.gpus,
            batch_format="numpy",
        )
        done = 0
        try:
            for out in mapped.iter_batches(batch_size=batch_size, batch_format="numpy"):
                index = np.asarray(out["index"], dtype=np.int64)
                if index.tolist() != list(range(done, done + len(index))):
                    raise MapError("Ray returned results out of order; the build stopped")
                yield range(done, done + len(index)), out
                done += len(index)
        except MapError:
            raise
        except Exception as exc:  # a worker's exception, re-raised by Ray in this process
            raise MapError(f"the Ray build failed in a worker: {_cause(exc)}") from exc

    def build_stage(
        self, work: Sequence[WorkItem], batch_size: int
    ) -> Iterator[tuple[Sequence[WorkItem], Sequence[Encoded]]]:
        """`RemoteStage`: every work item decoded and encoded (and annotated) on workers."""
        self.positions = {id(item): i for i, item in enumerate(work)}
        paths = [item.path.as_posix() for item in work]
        for span, out in self._run(paths, batch_size, encode=True):
            batch = [work[i] for i in span]
            encoded = []
            for j, i in enumerate(span):
                error = str(out["error"][j]) or None
                sha = str(out["sha256"][j]) or None
                fine = out["fine"][j] if self.fine and error is None else None
                vector = out["vector"][j] if error is None else None
                encoded.append(Encoded(sha, error, vector, fine))
                if self.annotator_factory is not None and error is None:
                    self.evidence[i] = _load(str(out["evidence"][j]))
            yield batch, encoded
        self.evidence.clear()  # refused images' evidence: never stored

    def annotate_stage(
        self, jobs: Sequence[Job], batch_size: int
    ) -> Iterator[tuple[Sequence[Job], Sequence[Annotated]]]:
        """`AnnotateStage`: images read and annotated on workers (no encoding)."""
        paths = [path.as_posix() for _, path in jobs]
        for span, out in self._run(paths, batch_size, encode=False):
            results = []
            for j in range(len(span)):
                error = str(out["error"][j]) or None
                items = None if error else _load(str(out["evidence"][j]))
                results.append(Annotated(error=error, items=items))
            yield [jobs[i] for i in span], results


@dataclass
class _EvidenceWriter:
    """Stores the build pass's evidence with each batch's rows (`Stored` callback)."""

    db: MapDatabase
    stages: RayStages
    annotator: ImageAnnotator
    todo: set[int]
    """Stored images lacking evidence at this annotator version when the build began."""
    report: AnnotateReport
    stored: list[int] = field(default_factory=list)

    def __call__(self, items: Sequence[WorkItem], ids: Sequence[int]) -> None:
        done = []
        for item, image_id in zip(items, ids, strict=True):
            position = self.stages.positions[id(item)]
            found = self.stages.evidence.pop(position, None)
            new = item.row_id is None
            if found is not None and (new or image_id in self.todo):
                done.append((image_id, found))
        self.report.items += self.db.evidence.put(self.annotator.name, self.annotator.version, done)
        self.report.annotated += len(done)


def build_with_ray(
    db: MapDatabase,
    scan: DatasetScan,
    encoder: Encoder,
    settings: RaySettings,
    encoder_factory: EncoderFactory,
    annotator: ImageAnnotator | None = None,
    annotator_factory: AnnotatorFactory | None = None,
    *,
    batch_size: int = 32,
    annotate_batch_size: int = 16,
    progress: bool = True,
    source_kind: str | None = None,
    checkpoint_seconds: float = 30.0,
) -> RayBuildReport:
    """`MapDatabase.build` (then `annotate` with ``annotator``) with the decoding, encoding
    and annotating on Ray workers; the same plan, rules, order, checkpoints and resume.

    ``encoder`` is this process's copy, for the fingerprint and shape checks;
    ``encoder_factory`` builds the same one on each worker (checked by fingerprint).
    ``annotator`` names the evidence and its version here; ``annotator_factory`` builds it
    on the workers from their encoder.
    """
    if (annotator is None) != (annotator_factory is None):
        raise MapError("pass both the annotator and its worker factory, or neither")
    start = time.perf_counter()
    db.check_encoder(encoder)
    with ray_session(settings) as gpus:
        fine = db.fine_shape is not None or isinstance(encoder, FineEncoder)
        stages = RayStages(
            settings, gpus, encoder_factory, annotator_factory, encoder.fingerprint, fine
        )
        evidence: AnnotateReport | None = None
        writer = None
        if annotator is not None:
            evidence = AnnotateReport(annotator.name, annotator.version)
            todo = set(db.evidence.todo(annotator.name, annotator.version))
            writer = _EvidenceWriter(db, stages, annotator, todo, evidence)
        report = db.build(
            scan,
            encoder,
            batch_size=batch_size,
            progress=progress,
            source_kind=source_kind,
            checkpoint_seconds=checkpoint_seconds,
            remote=stages.build_stage,
            stored=writer,
        )
        if annotator is not None and evidence is not None:
            rest = db.annotate(
                annotator,
                batch_size=annotate_batch_size,
                progress=progress,
                stage=stages.annotate_stage,
            )
            evidence.already_done = rest.already_done - evidence.annotated
            evidence.annotated += rest.annotated
            evidence.items += rest.items
            evidence.unreadable = rest.unreadable
            evidence.seconds = time.perf_counter() - start
    return RayBuildReport(
        report, evidence, settings.workers, gpus, seconds=time.perf_counter() - start
    )


def _cause(exc: BaseException) -> str:
    """The worker's own error ("RuntimeError: ...") from a Ray-wrapped exception, whose
    text carries the worker's traceback; else the exception's last line."""
    text = str(exc)
    for line in text.splitlines():
        match = re.match(r"^(?!ray\.)([A-Za-z_][\w.]*(?:Error|Exception)): (.*)$", line.strip())
        if match:
            return f"{match.group(1)}: {match.group(2)}"
    lines = text.strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
