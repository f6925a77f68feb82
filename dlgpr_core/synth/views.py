"""How one place is photographed several times: viewpoint, zoom, light, season, traffic.

Views of a place share its static layout but differ in everything a retrieval model
must learn to ignore, so that a place is recognisable from a view it was not indexed with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlgpr_core.synth import vocabulary as voc
from dlgpr_core.synth.geometry import NEAR_DEPTH, ROAD_NEAR, facade_depth, far_kerb
from dlgpr_core.synth.scene import Scene, frontage_length


@dataclass(frozen=True)
class TransientSpec:
    """A car or pedestrian; drawn, boxed, never described."""

    kind: str
    x: float
    depth: float
    colour: voc.RGB
    size: float
    """Length of a car / height of a pedestrian, metres."""


@dataclass(frozen=True)
class ViewSpec:
    """Everything that varies between the images of one place."""

    index: int
    cam_x: float
    """Camera position along the street, metres from the left end of the block."""
    yaw: float
    """Degrees off the facade normal; positive turns right."""
    zoom: float
    time_of_day: str
    season: str
    year: int
    month: int
    transients: tuple[TransientSpec, ...]
    noise_seed: int


def _transients(
    rng: np.random.Generator, depth: float, lo: float, hi: float
) -> tuple[TransientSpec, ...]:
    out: list[TransientSpec] = []
    lanes = (ROAD_NEAR + 1.6, far_kerb(depth) - 1.6)
    for _ in range(int(rng.integers(0, 3))):
        lane = lanes[int(rng.integers(2))]
        colour = voc.CAR_COLOURS[int(rng.integers(len(voc.CAR_COLOURS)))]
        out.append(
            TransientSpec(
                "car", float(rng.uniform(lo, hi)), lane, colour, float(rng.uniform(3.8, 4.8))
            )
        )
    for _ in range(int(rng.integers(0, 4))):
        near = rng.random() < 0.4
        d = (
            float(rng.uniform(3.4, NEAR_DEPTH + 0.6))
            if near
            else float(rng.uniform(depth - 2.6, depth - 1.0))
        )
        r, g, b = (int(c) for c in rng.integers(30, 220, size=3))
        out.append(
            TransientSpec(
                "pedestrian",
                float(rng.uniform(lo, hi)),
                d,
                (r, g, b),
                float(rng.uniform(1.55, 1.9)),
            )
        )
    # Far things first so that near ones are painted over them.
    return tuple(sorted(out, key=lambda t: -t.depth))


def sample_views(rng: np.random.Generator, scene: Scene, n_views: int) -> list[ViewSpec]:
    length = frontage_length(scene)
    depth = facade_depth(scene.street["width"])
    base_year = int(rng.integers(2008, 2021))
    # Every place is seen in several seasons: cycle through a shuffled season order.
    seasons = [voc.SEASONS[int(i)] for i in rng.permutation(len(voc.SEASONS))]
    views: list[ViewSpec] = []
    for i in range(n_views):
        season = seasons[i % len(seasons)]
        pan = min(5.0, 0.2 * length)
        cam_x = float(np.round(length / 2 + rng.uniform(-pan, pan), 2))
        months = voc.SEASON_MONTHS[season]
        views.append(
            ViewSpec(
                index=i,
                cam_x=cam_x,
                yaw=float(np.round(rng.uniform(-10.0, 10.0), 1)),
                zoom=float(np.round(rng.uniform(0.85, 1.35), 3)),
                time_of_day=voc.TIMES_OF_DAY[int(rng.integers(len(voc.TIMES_OF_DAY)))],
                season=season,
                year=base_year + int(rng.integers(0, 4)),
                month=months[int(rng.integers(len(months)))],
                transients=_transients(rng, depth, cam_x - 9.0, cam_x + 9.0),
                noise_seed=int(rng.integers(2**31)),
            )
        )
    return views
