"""How much of a place its map's views show: the things a person there sees that no image does.

A map holds a few views per place; a person standing there sees all around. A bus stop
behind the camera of every view is in no image, so no annotator (nor the oracle's
evidence, which is each view's regions) can report it, yet a person says "yes, there is a
bus stop". The answer model turns P(some view shows the thing) into P(it is there) with the
rate measured here (`dlgpr_core.dialogue.answer_model.UNSEEN_RATES`). It reads a data set's
annotations (elements and view regions), so it is measured on training cities, never on the
robot:

    python -m dlgpr_core.evaluation.coverage data/synth Trainville Trainhaven Trainmoor Trainford
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from dlgpr_core.data.annotations import PlaceAnnotation, read_annotations
from dlgpr_core.evidence.slots import STREET


def unseen_rates(places: Iterable[PlaceAnnotation], min_rate: float = 0.005) -> dict[str, float]:
    """Per category, P(the place has it | none of its views has a region of it): over the
    places whose views show no such thing, the share that has one. Categories that no
    place has, or whose rate is below `min_rate`, are left out (the answer model reads a
    missing rate as 0); the street is always there and has no rate."""
    have_unseen: Counter[str] = Counter()
    not_shown: Counter[str] = Counter()
    places = list(places)
    categories = {e.category for p in places for e in p.elements if e.category != STREET}
    for place in places:
        category_of = {e.id: e.category for e in place.elements}
        shown = {category_of.get(r.element_id) for v in place.views for r in v.regions}
        has = set(category_of.values())
        for c in categories - shown:
            not_shown[c] += 1
            have_unseen[c] += c in has
    rates = {c: have_unseen[c] / not_shown[c] for c in sorted(not_shown)}
    return {c: round(r, 3) for c, r in rates.items() if r >= min_rate}


def main(
    data: Annotated[Path, typer.Argument(help="data set root (GSV-Cities layout)")],
    cities: Annotated[list[str], typer.Argument(help="cities to pool: the training cities")],
    min_rate: Annotated[float, typer.Option(help="rates below this are left out")] = 0.005,
    out: Annotated[
        Path | None, typer.Option(help="also write them here, for `dlgpr map coverage --rates`")
    ] = None,
) -> None:
    """Prints the pooled unseen rates of `cities` as JSON (`AnswerModel.unseen`)."""
    places: list[PlaceAnnotation] = []
    for city in cities:
        path = data / "Annotations" / f"{city}.jsonl"
        if not path.exists():
            raise typer.BadParameter(f"no annotations for {city}: expected {path}")
        places += read_annotations(path)
    text = json.dumps(unseen_rates(places, min_rate), indent=1)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
