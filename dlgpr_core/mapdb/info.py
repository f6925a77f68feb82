"""What a map holds and what it costs: counts for a status topic, details for a person."""

from __future__ import annotations

from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.directory import MapDirectory
from dlgpr_core.mapdb.evidence import EvidenceStore
from dlgpr_core.mapdb.index import APPROX_KINDS, EXACT_FILE, approx_file
from dlgpr_core.mapdb.report import MapInfo
from dlgpr_core.mapdb.schema import SCHEMA_VERSION
from dlgpr_core.mapdb.sources import list_sources
from dlgpr_core.mapdb.vectors import MapVectors

EXACT_KIND = "exact (IndexIDMap2 over IndexFlatIP)"


def map_stats(map_dir: MapDirectory, vectors: MapVectors) -> dict[str, int]:
    """Counts only; cheap enough for a status topic."""
    store = map_dir.store
    with map_dir.lock:
        return {
            "places": store.count("places"),
            "images": store.count("images"),
            "indexed": vectors.exact.ntotal,
            "pending": vectors.n_pending,
            "skipped": store.count("skipped"),
        }


def map_skipped(map_dir: MapDirectory) -> list[SkippedItem]:
    """Every input any build of this map refused, with the latest reason."""
    with map_dir.lock:
        return [SkippedItem(source, reason) for source, reason, _ in map_dir.store.skipped()]


def map_info(map_dir: MapDirectory, vectors: MapVectors) -> MapInfo:
    """Counts plus encoder, index kinds and their size per image on disk."""
    with map_dir.lock:
        counts = map_stats(map_dir, vectors)
        kinds, sizes, fine_bytes = _index_costs(map_dir, max(1, counts["indexed"]))
        return MapInfo(
            directory=str(map_dir.directory),
            encoder_fingerprint=map_dir.encoder_fingerprint,
            dim=map_dir.dim,
            created=map_dir.created,
            schema_version=SCHEMA_VERSION,
            n_places=counts["places"],
            n_images=counts["images"],
            n_indexed=counts["indexed"],
            n_pending=counts["pending"],
            n_skipped=counts["skipped"],
            index_types=kinds,
            bytes_per_embedding=sizes,
            sources=list_sources(map_dir),
            fine_bytes_per_image=fine_bytes,
            evidence=[run.render() for run in EvidenceStore(map_dir.store).runs()],
        )


def _index_costs(
    map_dir: MapDirectory, n_indexed: int
) -> tuple[list[str], dict[str, float], float | None]:
    """(index kinds, bytes per indexed image by kind, fine-feature bytes per image);
    an approximate index is listed as stale when it predates the last map build."""
    kinds = [EXACT_KIND]
    sizes: dict[str, float] = {"raw vector": float(map_dir.dim * 4)}
    exact_path = map_dir.directory / EXACT_FILE
    if exact_path.exists():
        sizes["exact"] = exact_path.stat().st_size / n_indexed
    fine_bytes: float | None = None
    if map_dir.fine_shape is not None:
        total, n_fine = map_dir.store.fine_bytes()
        fine_bytes = total / max(1, n_fine)
        sizes[f"fine features {'x'.join(map(str, map_dir.fine_shape))} float16"] = fine_bytes
    generation = map_dir.generation()
    for kind in APPROX_KINDS:
        path = map_dir.directory / approx_file(kind)
        built = map_dir.store.get_meta(f"approx.{kind}.generation")
        if built is None or not path.exists():
            continue
        state = "current" if built == generation else "stale, rebuild it"
        kinds.append(f"{kind} ({state})")
        sizes[kind] = path.stat().st_size / n_indexed
    return kinds, sizes, fine_bytes
