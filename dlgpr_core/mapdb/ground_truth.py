"""The annotations (ground truth) of the data sets a map was built from.

SynthCities and DQ-Cities data sets carry `Annotations/<city>.jsonl`: exact facts no robot
has. They are for simulated users and evaluation. Robot-side code may not import this
module (import-linter contract in pyproject.toml); the exceptions still listed there are the
questioners and the fact update that issue #11 moves onto image-derived evidence.
"""

from __future__ import annotations

from pathlib import Path

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.mapdb.database import MapDatabase


def map_annotations(
    map_path: Path | str, annotations: Path | str = ""
) -> dict[str, PlaceAnnotation]:
    """Annotated places by namespaced id from ``<root>/Annotations/<city>.jsonl`` of every
    data set the map was built from; `annotations` names an Annotations directory instead
    (a map whose data set moved). Places without annotations are simply absent."""
    if annotations:
        dirs = [Path(annotations)]
    else:
        with MapDatabase.open(Path(map_path)) as db:
            dirs = [Path(s.root) / "Annotations" for s in db.sources()]
    places: dict[str, PlaceAnnotation] = {}
    for d in dirs:
        for path in sorted(d.glob("*.jsonl")):
            places.update(places_by_id(read_annotations(path)))
    return places
