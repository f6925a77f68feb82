"""`dlgpr synth`: generate a SynthCities city (street-view-like images, exact annotations)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlgpr_core.cli.common import console


def synth(
    out: Annotated[Path, typer.Argument(help="Output root (GSV-Cities layout is written here).")],
    city: Annotated[str, typer.Option(help="City name (folder and CSV name).")] = "Synthville",
    places: Annotated[int, typer.Option(min=1, help="Number of places.")] = 200,
    views: Annotated[int, typer.Option(min=1, help="Views (images) per place.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same city.")] = 0,
    difficulty: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="0 = distinct places, 1 = near-duplicates.")
    ] = 0.5,
    workers: Annotated[int, typer.Option(min=1, help="Processes used for rendering.")] = 1,
) -> None:
    """Generate a SynthCities city: street-view-like images with exact annotations."""
    from dlgpr_core.synth import generate_city

    manifest = generate_city(
        out, city, places, views_per_place=views, seed=seed, difficulty=difficulty, workers=workers
    )
    console.print(
        f"[green]generated[/] {manifest.n_places} places, {manifest.n_images} images of "
        f"{manifest.city} under {out}"
    )
