"""The unseen rates the answer model ships (`evaluation/coverage.py`), on hand-made places."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlgpr_core.data.annotations import Element, PlaceAnnotation, Region, ViewAnnotation
from dlgpr_core.evaluation.coverage import main, unseen_rates


def _place(pid: int, elements: dict[str, str], shown: list[list[str]]) -> PlaceAnnotation:
    """A place with elements {id: category} and one view per list of element ids shown."""
    views = [
        ViewAnnotation(
            image=f"Images/Handton/{pid}_{i}.jpg",
            width=320,
            height=240,
            heading=90.0 * i,
            regions=[Region(bbox=[0, 0, 10, 10], phrase=e, element_id=e) for e in ids],
        )
        for i, ids in enumerate(shown)
    ]
    return PlaceAnnotation(
        city="Handton",
        place_id=pid,
        caption="A place.",
        description="A place.",
        elements=[Element(id=i, kind="furniture", category=c) for i, c in elements.items()]
        + [Element(id="s", kind="street", category="street")],
        views=views,
    )


def test_unseen_rate_by_hand() -> None:
    """Four places. Bench: shown at place 0; at places 1, 2 and 3 no view shows one and
    place 1 has one anyway -> 1/3. Mailbox: shown at 1, never elsewhere -> 0 (left out).
    Bank: shown at 0 and 2; places 1 and 3 show none, and place 3 has one behind every
    view -> 1/2. The street has no rate."""
    places = [
        _place(0, {"b": "bench", "k": "bank"}, [["b"], ["k"]]),
        _place(1, {"b": "bench", "m": "mailbox"}, [["m"], []]),
        _place(2, {"k": "bank"}, [["k"]]),
        _place(3, {"k": "bank"}, [[]]),
    ]
    assert unseen_rates(places) == {"bench": 0.333, "bank": 0.5}
    assert unseen_rates(places, min_rate=0.4) == {"bank": 0.5}


def test_a_city_without_annotations_is_named(tmp_path: Path) -> None:
    """`python -m dlgpr_core.evaluation.coverage` refuses a city it has no annotations for,
    naming the file it expected (a usage error, exit status 2); it writes nothing, so
    nothing can be lost."""
    with pytest.raises(typer.BadParameter) as err:
        main(tmp_path, ["Nowhere"])
    assert str(err.value) == (
        f"no annotations for Nowhere: expected {tmp_path / 'Annotations' / 'Nowhere.jsonl'}"
    )
    app = typer.Typer()
    app.command()(main)
    assert CliRunner().invoke(app, [str(tmp_path), "Nowhere"]).exit_code == 2
    assert list(tmp_path.iterdir()) == []
