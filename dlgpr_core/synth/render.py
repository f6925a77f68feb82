"""Renders one view of a place and measures its region boxes in the same pass.

Painting order is back to front (facades, ground, then objects by decreasing depth),
so nearer things occlude farther ones. Boxes are amodal: an element half hidden by a
passing car keeps its full box, as a human annotator would draw it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
from PIL import Image

from dlgpr_core.synth import painters
from dlgpr_core.synth import vocabulary as voc
from dlgpr_core.synth.canvas import Box, Canvas, mix, shade
from dlgpr_core.synth.geometry import (
    NEAR_DEPTH,
    ROAD_NEAR,
    Camera,
    clip_box,
    facade_depth,
    far_kerb,
)
from dlgpr_core.synth.scene import Scene, element_spans
from dlgpr_core.synth.views import TransientSpec, ViewSpec

SKY: dict[str, tuple[voc.RGB, voc.RGB]] = {
    "morning": ((150, 186, 226), (232, 226, 212)),
    "noon": ((84, 146, 224), (186, 212, 238)),
    "afternoon": ((104, 156, 220), (222, 214, 192)),
    "evening": ((76, 92, 160), (246, 168, 108)),
    "dusk": ((34, 42, 86), (150, 110, 128)),
}
TINT: dict[str, tuple[float, float, float]] = {
    "morning": (1.0, 0.98, 0.95),
    "noon": (1.06, 1.06, 1.05),
    "afternoon": (1.02, 0.97, 0.9),
    "evening": (0.95, 0.8, 0.66),
    "dusk": (0.55, 0.55, 0.7),
}
ASPHALT: voc.RGB = (70, 70, 74)
FAR_FURNITURE_OFFSET = 1.6
TREE_OFFSET = 2.3
LAMP_OFFSET = 2.9
HEDGE_OFFSET = 0.5


@dataclass
class RenderedView:
    image: Image.Image
    regions: list[tuple[str, list[int]]]
    """``(element_id, box)`` per visible instance, in painting order."""
    transients: list[tuple[str, list[int]]]


@lru_cache(maxsize=8)
def _tint_lut(time_of_day: str) -> list[int]:
    lut: list[int] = []
    for k in TINT[time_of_day]:
        lut += [min(255, int(i * k)) for i in range(256)]
    return lut


def _sky(cv: Canvas, time_of_day: str, distant: voc.RGB) -> None:
    top, bottom = SKY[time_of_day]
    w, h = cv.cam.width, cv.cam.height
    horizon = cv.cam.horizon
    steps = 24
    for i in range(steps):
        y0 = horizon * i / steps
        cv.draw.rectangle(
            (0, y0, w, horizon * (i + 1) / steps + 1), fill=mix(top, bottom, i / steps)
        )
    cv.draw.rectangle((0, horizon, w, h), fill=bottom)
    # A hazy row of distant buildings shows through alleys between the facades.
    cv.draw.rectangle(
        (0, horizon - 0.12 * h, w, horizon + 0.05 * h), fill=mix(distant, bottom, 0.45)
    )


def _pavement(cv: Canvas, d_far: float, d_near: float, colour: voc.RGB, kind: str) -> None:
    cv.band(d_far, d_near, colour)
    joint = shade(colour, 0.82)
    step = {"cobblestones": 0.35, "red brick paving": 0.5, "grey paving slabs": 1.0}.get(kind)
    if step is None:
        return
    d_lo = max(d_near, 1.2)
    d = d_far
    while d > d_lo:
        y = cv.cam.v(0.0, d)
        cv.draw.line([(0, y), (cv.cam.width, y)], fill=joint, width=1)
        d -= step
    # Joints along the street axis converge towards the vanishing point.
    x = np.floor(cv.cam.x_at(0, d_lo) / step) * step
    x_end = cv.cam.x_at(cv.cam.width, d_lo)
    while x <= x_end:
        cv.draw.line(
            [(cv.cam.u(x, d_far), cv.cam.v(0.0, d_far)), (cv.cam.u(x, d_lo), cv.cam.v(0.0, d_lo))],
            fill=joint,
            width=1,
        )
        x += step * (1.0 if d_far - d_near < 4 else 1.5)


def _ground(cv: Canvas, scene: Scene, view: ViewSpec, depth: float) -> None:
    kind = scene.street["pavement"]
    pave = voc.PAVEMENT_COLOURS[kind]
    road = ASPHALT
    if view.season == "winter":
        pave = mix(pave, painters.SNOW, 0.75)
        road = mix(road, painters.SNOW, 0.15)
    _pavement(cv, depth, far_kerb(depth), pave, kind)
    cv.band(far_kerb(depth), ROAD_NEAR, road)
    kerb = (180, 180, 176)
    cv.band(far_kerb(depth), far_kerb(depth) - 0.15, kerb)
    # Dashed centre line.
    mid = (far_kerb(depth) + ROAD_NEAR) / 2
    x = np.floor(cv.cam.x_at(0, mid) / 6.0) * 6.0
    while x <= cv.cam.x_at(cv.cam.width, mid):
        cv.ground(
            [(x, mid + 0.08), (x + 3.0, mid + 0.08), (x + 3.0, mid - 0.08), (x, mid - 0.08)],
            (228, 228, 220),
        )
        x += 6.0
    _pavement(cv, ROAD_NEAR, 0.0, pave, kind)
    cv.band(ROAD_NEAR, ROAD_NEAR - 0.2, kerb)


def render_view(scene: Scene, view: ViewSpec, size: tuple[int, int]) -> RenderedView:
    """Pure function of its inputs, so views can be rendered in any process, in any order."""
    rng = np.random.default_rng(view.noise_seed)
    cam = Camera.for_view(size, view.cam_x, view.yaw, view.zoom)
    image = Image.new("RGB", size)
    cv = Canvas(image, cam)
    depth = facade_depth(scene.street["width"])
    spans = element_spans(scene)
    dark = view.time_of_day in ("dusk", "evening")
    lit = [bool(x) for x in rng.random(23) < (0.45 if dark else 0.0)]
    _sky(cv, view.time_of_day, (150, 150, 156))

    boxes: list[tuple[str, Box]] = []
    for b in scene.buildings:
        ((x0, x1),) = spans[b.id]
        boxes.append((b.id, painters.paint_building(cv, b, x0, x1, depth, view.season, lit)))
    _ground(cv, scene, view, depth)

    # Objects, back to front. Each job paints one instance and records its box.
    transients: list[tuple[str, list[int]]] = []
    jobs: list[tuple[float, int, Callable[[], None]]] = []

    def job(d: float, paint: Callable[[], None]) -> None:
        jobs.append((d, len(jobs), paint))

    def record(eid: str, paint: Callable[[], Box]) -> Callable[[], None]:
        return lambda: boxes.append((eid, paint()))

    for e in scene.props:
        for x0, x1 in spans[e.id]:
            xc = (x0 + x1) / 2
            if e.category == "crosswalk":
                boxes.append((e.id, painters.paint_crosswalk(cv, e, x0, x1, depth)))
            elif e.category == "hedge":
                d = depth - HEDGE_OFFSET
                job(d, record(e.id, partial(painters.paint_hedge, cv, e, x0, x1, d, view.season)))
            elif e.category == "tree":
                d = depth - TREE_OFFSET
                job(d, record(e.id, partial(painters.paint_tree, cv, e, xc, d, view.season)))
            elif e.category == "lamp post":
                d = depth - LAMP_OFFSET
                job(d, record(e.id, partial(painters.paint_lamp_post, cv, e, xc, d, dark)))
            else:
                d = depth - FAR_FURNITURE_OFFSET if e.side == "far" else NEAR_DEPTH
                job(d, record(e.id, partial(painters.paint_furniture, cv, e, xc, d, view.season)))

    def transient(t: TransientSpec) -> None:
        clipped = clip_box(painters.paint_transient(cv, t), *size)
        if clipped is not None:
            transients.append((t.kind, clipped))

    for t in view.transients:
        job(t.depth, partial(transient, t))
    for _, _, paint in sorted(jobs, key=lambda j: (-j[0], j[1])):
        paint()

    image = image.point(_tint_lut(view.time_of_day))
    if cv.glow:
        glow = Canvas(image, cam)
        for rect, colour in cv.glow:
            glow.draw.rectangle(rect, fill=colour)
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.normal(0.0, 2.5, size=pixels.shape).round().astype(np.int16)
    image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))

    regions = []
    for eid, box in boxes:
        clipped = clip_box(box, *size)
        if clipped is not None:
            regions.append((eid, clipped))
    return RenderedView(image, regions, transients)
