"""The embedded demo city: generated and mapped on first use, so `make demo` needs no data.

A SynthCities city (its annotations are what the simulated person knows) and its map built
with the embedded default encoder; both resume where an interrupted first run stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

DEMO_CITY = "Demoville"


def ensure_demo_city(
    workdir: Path,
    places: int = 300,
    seed: int = 7,
    evidence: str = "learned",
    say: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """(annotations file, map directory) of the demo city under `workdir`, its images
    annotated by `evidence` (an annotator spec); `say` hears the reports of what was added."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.evidence.registry import make_annotator
    from dlgpr_core.mapdb.access import open_or_create_map
    from dlgpr_core.synth import generate_city

    annotations = workdir / "Annotations" / f"{DEMO_CITY}.jsonl"
    if not annotations.exists():
        generate_city(workdir, DEMO_CITY, places, views_per_place=4, seed=seed, difficulty=0.5)
    db, enc = open_or_create_map(workdir / "map", "dlgpr-lite")
    with db:
        report = db.build(scan_dataset(workdir, fmt="gsv"), enc, progress=True, source_kind="gsv")
        annotated = db.annotate(make_annotator(evidence, encoder=enc))
    if say is not None and report.added:
        say(report.render())
    if say is not None and annotated.annotated:
        say(annotated.render())
    return annotations, workdir / "map"
