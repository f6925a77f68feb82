"""Regenerate the SynthCities example views shown in the README (docs/images/synth_*.jpg).

Run from the repository root: ``python scripts/make_readme_views.py``. The images come
from a tiny seeded city, so rerunning reproduces them byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dlgpr_core.data.annotations import read_annotations
from dlgpr_core.synth import generate_city

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
PLACES = (0, 2, 5)
VIEWS = (0, 1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("synth_*.jpg"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = generate_city(root, "Readme", n_places=max(PLACES) + 1, seed=7, progress=False)
        places = read_annotations(root / manifest.annotations)
        for pid in PLACES:
            place = places[pid]
            print(f"place {pid}: {place.caption}")
            for vi in VIEWS:
                view = place.views[vi]
                target = OUT / f"synth_place{pid}_view{vi}.jpg"
                shutil.copyfile(root / view.image, target)
                print(f"  {target.name}: {view.conditions}")


if __name__ == "__main__":
    main()
