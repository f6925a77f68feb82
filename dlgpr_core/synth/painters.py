"""One painter per element category. Each draws an instance and returns its exact
(amodal, unclipped) screen box, so region annotations come from the same numbers as
the pixels. Season changes only what the description never states (foliage, snow).
"""

from __future__ import annotations

from dlgpr_core.synth import vocabulary as voc
from dlgpr_core.synth.canvas import Box, Canvas, mix, shade, stable_hash
from dlgpr_core.synth.geometry import FLOOR_HEIGHT, ROAD_NEAR, far_kerb
from dlgpr_core.synth.scene import SceneElement
from dlgpr_core.synth.views import TransientSpec

WHITE: voc.RGB = (240, 240, 236)
SNOW: voc.RGB = (236, 238, 242)
GLASS: voc.RGB = (86, 104, 124)
LIT: voc.RGB = (255, 214, 128)
SIGN_STYLES: tuple[tuple[voc.RGB, voc.RGB], ...] = (
    ((28, 32, 44), (245, 240, 225)),
    ((240, 238, 228), (30, 30, 36)),
    ((118, 22, 28), (250, 235, 200)),
    ((22, 70, 44), (245, 240, 225)),
)
ROOF_COLOURS: tuple[voc.RGB, ...] = ((96, 60, 52), (72, 76, 86))


def building_height(b: SceneElement) -> float:
    return int(b.attrs["floors"]) * FLOOR_HEIGHT + 0.8


def _texture(cv: Canvas, b: SceneElement, x0: float, x1: float, top: float, d: float) -> None:
    """Material patterns: what makes "brick" and "stone" visible, not just stated."""
    base = voc.COLOURS[b.attrs["colour"]]
    dark = shade(base, 0.78)
    s = cv.cam.scale(d)
    material = b.attrs["material"]

    def step_for(metres: float) -> float:
        while metres * s < 2.6:
            metres *= 2
        return metres

    if material in ("brick", "stone"):
        row = step_for(0.33 if material == "brick" else 0.7)
        joint = row * (2.4 if material == "brick" else 2.0)
        h, k = row, 0
        while h < top:
            cv.line([(x0, h), (x1, h)], d, dark, 0.0)
            x = x0 + (joint / 2 if k % 2 else 0.0)
            while x < x1 and joint * s >= 5:
                cv.line([(x, h - row), (x, h)], d, dark, 0.0)
                x += joint
            h += row
            k += 1
    elif material == "wood":
        plank = step_for(0.35)
        x = x0 + plank
        while x < x1:
            cv.line([(x, 0.0), (x, top)], d, dark, 0.0)
            x += plank
    elif material == "stucco":
        for fl in range(1, int(b.attrs["floors"]) + 1):
            cv.rect(x0, fl * FLOOR_HEIGHT - 0.12, x1, fl * FLOOR_HEIGHT, d, shade(base, 0.9))


def _windows(cv: Canvas, b: SceneElement, x0: float, x1: float, d: float, lit: list[bool]) -> None:
    base = voc.COLOURS[b.attrs["colour"]]
    floors = int(b.attrs["floors"])
    w = x1 - x0
    frame = shade(base, 0.55) if sum(base) > 450 else mix(base, WHITE, 0.7)
    if b.attrs["material"] == "glass":
        cols = max(2, int(w / 1.6))
        for fl in range(1, floors):
            for k in range(cols):
                xa = x0 + k * w / cols
                pane = mix(base, WHITE, 0.25 + 0.15 * ((k + fl) % 2))
                on = lit[(fl * 7 + k) % len(lit)]
                cv.rect(
                    xa + 0.08,
                    fl * FLOOR_HEIGHT + 0.1,
                    xa + w / cols - 0.08,
                    (fl + 1) * FLOOR_HEIGHT - 0.1,
                    d,
                    LIT if on else pane,
                    glow=on,
                )
        for k in range(1, cols):
            xm = x0 + k * w / cols
            cv.line([(xm, 0.0), (xm, floors * FLOOR_HEIGHT)], d, shade(base, 0.6), 0.1)
        return
    n = max(1, int((w - 0.8) / 2.4))
    for fl in range(1, floors):
        for k in range(n):
            xc = x0 + (k + 0.5) * w / n
            h0 = fl * FLOOR_HEIGHT + 0.8
            cv.rect(xc - 0.62, h0 - 0.1, xc + 0.62, h0 + 1.6, d, frame)
            on = lit[(fl * 7 + k) % len(lit)]
            cv.rect(xc - 0.5, h0, xc + 0.5, h0 + 1.5, d, LIT if on else GLASS, glow=on)


def _church_front(cv: Canvas, b: SceneElement, x0: float, x1: float, top: float, d: float) -> None:
    base = voc.COLOURS[b.attrs["colour"]]
    xc = (x0 + x1) / 2
    for xw in (x0 + (x1 - x0) * 0.2, x1 - (x1 - x0) * 0.2):
        cv.rect(xw - 0.55, 1.2, xw + 0.55, top - 2.0, d, GLASS)
        cv.ellipse(xw, top - 2.0, 0.55, 0.55, d, GLASS)
    cv.ellipse(xc, top - 1.8, 0.9, 0.9, d, shade(base, 0.6))
    cv.ellipse(xc, top - 1.8, 0.65, 0.65, d, (120, 60, 90))


def _church_roof(cv: Canvas, b: SceneElement, x0: float, x1: float, top: float, d: float) -> float:
    """Gable, bell tower and spire; returns the height of the cross."""
    base = voc.COLOURS[b.attrs["colour"]]
    roof = ROOF_COLOURS[1]
    xc = (x0 + x1) / 2
    cv.poly([(x0 - 0.3, top), (x1 + 0.3, top), (xc, top + 3.0)], d, roof)
    tower_top = top + 5.0
    cv.rect(xc - 1.5, top - 0.5, xc + 1.5, tower_top, d, shade(base, 0.92))
    cv.rect(xc - 0.4, tower_top - 2.6, xc + 0.4, tower_top - 1.0, d, (40, 40, 44))
    spire = tower_top + 6.0
    cv.poly([(xc - 1.7, tower_top), (xc + 1.7, tower_top), (xc, spire)], d, roof)
    cv.line([(xc, spire), (xc, spire + 1.0)], d, (60, 60, 60), 0.12)
    cv.line([(xc - 0.35, spire + 0.7), (xc + 0.35, spire + 0.7)], d, (60, 60, 60), 0.12)
    return spire + 1.0


def paint_building(
    cv: Canvas, b: SceneElement, x0: float, x1: float, d: float, season: str, lit: list[bool]
) -> Box:
    base = voc.COLOURS[b.attrs["colour"]]
    top = building_height(b)
    winter = season == "winter"
    cv.rect(x0, 0.0, x1, top, d, base)
    _texture(cv, b, x0, x1, top, d)
    w = x1 - x0
    church = b.category == "church"
    if church:
        _church_front(cv, b, x0, x1, top, d)
    else:
        _windows(cv, b, x0, x1, d, lit)
    # Ground floor: door and shop windows.
    door = voc.COLOURS[b.attrs["door"]]
    xd = (x0 + x1) / 2 if church else x0 + max(1.0, 0.18 * w)
    cv.rect(xd - 0.65, 0.0, xd + 0.65, 2.4, d, shade(door, 0.7))
    cv.rect(xd - 0.55, 0.0, xd + 0.55, 2.3, d, door)
    if church:
        cv.ellipse(xd, 2.3, 0.55, 0.5, d, door)
    else:
        sx0, sx1 = xd + 1.0, x1 - 0.5
        if sx1 - sx0 > 1.0:
            cv.rect(sx0, 0.45, sx1, 2.35, d, mix(base, WHITE, 0.5))
            cv.rect(sx0 + 0.1, 0.55, sx1 - 0.1, 2.25, d, GLASS)
            n = max(1, int((sx1 - sx0) / 1.8))
            for k in range(1, n):
                xm = sx0 + k * (sx1 - sx0) / n
                cv.line([(xm, 0.55), (xm, 2.25)], d, mix(base, WHITE, 0.5), 0.08)
    awning = b.attrs["awning"]
    if awning != "none":
        ac = voc.COLOURS[awning]
        ax0, ax1 = x0 + 0.3, x1 - 0.3
        cv.rect(ax0, 2.45, ax1, 3.05, d, ac)
        stripe = mix(ac, WHITE, 0.45)
        x = ax0 + 0.5
        while x < ax1 - 0.5:
            cv.rect(x, 2.55, x + 0.5, 3.05, d, stripe)
            x += 1.0
        cv.rect(ax0, 2.4, ax1, 2.55, d, shade(ac, 0.7))
        if winter:
            cv.rect(ax0, 3.0, ax1, 3.1, d, SNOW)
    # Sign band with the business name.
    bg, fg = SIGN_STYLES[stable_hash(b.attrs["name"]) % len(SIGN_STYLES)]
    name = b.attrs["name"]
    # A church's name board must fit between its tall windows.
    sw = min((0.5 if church else 0.8) * w, 0.42 * len(name) + 1.2)
    xs = (x0 + x1) / 2
    cv.rect(xs - sw / 2, 3.15, xs + sw / 2, 3.95, d, bg)
    cv.text(xs, 3.55, d, name, sw - 0.2, 0.8, fg)
    # Roof.
    if church:
        peak = _church_roof(cv, b, x0, x1, top, d)
        return cv.cam.box(x0 - 0.3, 0.0, x1 + 0.3, peak, d)
    roof = ROOF_COLOURS[stable_hash(b.attrs["name"] + b.category) % 2]
    if b.attrs["roof"] == "gabled":
        peak = top + min(3.5, 0.3 * w)
        cv.poly([(x0 - 0.3, top), (x1 + 0.3, top), ((x0 + x1) / 2, peak)], d, roof)
        if winter:
            xc = (x0 + x1) / 2
            cv.poly(
                [
                    (x0 + 0.4, top + 0.35),
                    (xc, peak - 0.1),
                    (x1 - 0.4, top + 0.35),
                    (xc, peak - 0.6),
                ],
                d,
                SNOW,
            )
        return cv.cam.box(x0 - 0.3, 0.0, x1 + 0.3, peak, d)
    cv.rect(x0 - 0.15, top - 0.35, x1 + 0.15, top, d, shade(base, 0.65))
    if winter:
        cv.rect(x0 - 0.15, top, x1 + 0.15, top + 0.15, d, SNOW)
        return cv.cam.box(x0 - 0.15, 0.0, x1 + 0.15, top + 0.15, d)
    return cv.cam.box(x0 - 0.15, 0.0, x1 + 0.15, top, d)


# --- vegetation ------------------------------------------------------------------------------

FOLIAGE: dict[str, dict[str, voc.RGB]] = {
    "spring": {
        "plane tree": (128, 188, 86),
        "linden tree": (140, 196, 90),
        "birch": (150, 200, 96),
    },
    "summer": {"plane tree": (52, 116, 46), "linden tree": (62, 124, 52), "birch": (78, 138, 60)},
    "autumn": {
        "plane tree": (200, 118, 44),
        "linden tree": (214, 168, 52),
        "birch": (226, 196, 64),
    },
}
BARK: voc.RGB = (88, 68, 50)


def paint_tree(cv: Canvas, e: SceneElement, xc: float, d: float, season: str) -> Box:
    tall = e.attrs["size"] == "tall"
    species = e.attrs["species"]
    if species == "pine tree":
        width, top = (3.2, 9.0) if tall else (2.2, 5.8)
        cv.rect(xc - 0.15, 0.0, xc + 0.15, 1.4, d, BARK)
        green = (32, 82, 50)
        for k in range(3):
            h0 = 1.2 + k * (top - 1.2) / 3.2
            half = width / 2 * (1 - k * 0.25)
            cv.poly(
                [(xc - half, h0), (xc + half, h0), (xc, min(top, h0 + (top - 1.2) / 2))], d, green
            )
            if season == "winter":
                cv.poly(
                    [(xc - half * 0.6, h0 + 0.5), (xc + half * 0.6, h0 + 0.5), (xc, h0 + 0.8)],
                    d,
                    SNOW,
                )
        return cv.cam.box(xc - width / 2, 0.0, xc + width / 2, top, d)
    trunk_h = 2.6 if tall else 1.8
    rx = (2.4 if tall else 1.6) * (0.7 if species == "birch" else 1.0)
    rh = (2.6 if tall else 1.8) * (1.15 if species == "birch" else 1.0)
    bark = (226, 224, 214) if species == "birch" else BARK
    cv.rect(xc - 0.18, 0.0, xc + 0.18, trunk_h + rh * 0.6, d, bark)
    if species == "birch":
        for k in range(3):
            h = 0.5 + k * 0.7
            cv.line([(xc - 0.18, h), (xc + 0.05, h)], d, (40, 40, 40), 0.06)
    cy = trunk_h + rh
    if season == "winter":
        for k in range(7):
            ang = -0.9 + k * 0.3
            tip = (xc + ang * rx, cy + rh * (0.9 - abs(ang) * 0.5))
            cv.line([(xc, trunk_h + 0.2 * k * rh / 7), tip], d, (74, 58, 44), 0.06)
    else:
        leaf = FOLIAGE[season][species]
        cv.ellipse(xc, cy - 0.15 * rh, rx, rh * 0.85, d, shade(leaf, 0.8))
        cv.ellipse(xc - rx * 0.3, cy + 0.1 * rh, rx * 0.7, rh * 0.75, d, leaf)
        cv.ellipse(xc + rx * 0.3, cy + 0.15 * rh, rx * 0.65, rh * 0.7, d, mix(leaf, WHITE, 0.12))
    return cv.cam.box(xc - rx, 0.0, xc + rx, cy + rh, d)


def paint_hedge(cv: Canvas, e: SceneElement, x0: float, x1: float, d: float, season: str) -> Box:
    h = 0.8 if e.attrs["height"] == "low" else 1.4
    green = {"autumn": (78, 104, 44), "winter": (44, 76, 46)}.get(season, (44, 104, 48))
    cv.rounded(x0, 0.0, x1, h, d, green)
    if season == "winter":
        cv.rect(x0 + 0.1, h - 0.12, x1 - 0.1, h, d, SNOW)
    return cv.cam.box(x0, 0.0, x1, h, d)


# --- street furniture ------------------------------------------------------------------------


def paint_lamp_post(cv: Canvas, e: SceneElement, xc: float, d: float, glow: bool) -> Box:
    c = voc.COLOURS[e.attrs["colour"]]
    cv.rect(xc - 0.07, 0.0, xc + 0.07, 4.6, d, c)
    cv.rect(xc - 0.15, 0.0, xc + 0.15, 0.5, d, c)
    cv.line([(xc, 4.5), (xc + 0.6, 4.6)], d, c, 0.07)
    cv.rect(xc + 0.4, 4.3, xc + 0.8, 4.6, d, c)
    cv.rect(xc + 0.45, 4.22, xc + 0.75, 4.32, d, LIT if glow else (200, 200, 190), glow=glow)
    return cv.cam.box(xc - 0.15, 0.0, xc + 0.8, 4.6, d)


def paint_furniture(cv: Canvas, e: SceneElement, xc: float, d: float, season: str) -> Box:
    cat = e.category
    if cat == "phone booth":
        c = voc.COLOURS[e.attrs["colour"]]
        cv.rect(xc - 0.5, 0.0, xc + 0.5, 2.4, d, c)
        for k in range(4):
            h0 = 0.5 + k * 0.42
            cv.rect(xc - 0.36, h0, xc + 0.36, h0 + 0.34, d, (176, 196, 206))
        cv.rect(xc - 0.5, 2.15, xc + 0.5, 2.35, d, shade(c, 0.6))
        cv.rect(xc - 0.55, 2.35, xc + 0.55, 2.45, d, shade(c, 0.8))
        return cv.cam.box(xc - 0.55, 0.0, xc + 0.55, 2.45, d)
    if cat == "bus stop":
        c = voc.COLOURS[e.attrs["colour"]]
        cv.rect(xc - 1.3, 0.3, xc + 1.3, 2.3, d, (170, 188, 196))
        for xp in (xc - 1.4, xc + 1.3):
            cv.rect(xp, 0.0, xp + 0.1, 2.5, d, c)
        cv.rect(xc - 1.5, 2.4, xc + 1.5, 2.65, d, c)
        cv.rect(xc - 1.0, 0.45, xc + 1.0, 0.55, d, shade(c, 0.7))
        cv.rect(xc + 1.6, 0.0, xc + 1.66, 2.8, d, (90, 90, 90))
        cv.rect(xc + 1.45, 2.3, xc + 1.81, 2.8, d, WHITE)
        cv.rect(xc + 1.5, 2.45, xc + 1.76, 2.65, d, c)
        return cv.cam.box(xc - 1.5, 0.0, xc + 1.81, 2.8, d)
    if cat == "bench":
        c = voc.COLOURS[e.attrs["colour"]]
        legs = (50, 50, 52) if e.attrs["material"] == "wooden" else shade(c, 0.7)
        for xl in (xc - 0.8, xc + 0.7):
            cv.rect(xl, 0.0, xl + 0.1, 0.9, d, legs)
        cv.rect(xc - 0.9, 0.42, xc + 0.9, 0.5, d, c)
        cv.rect(xc - 0.9, 0.6, xc + 0.9, 0.7, d, c)
        cv.rect(xc - 0.9, 0.78, xc + 0.9, 0.88, d, c)
        return cv.cam.box(xc - 0.9, 0.0, xc + 0.9, 0.9, d)
    if cat == "fountain":
        stone = (168, 164, 156)
        if e.attrs["shape"] == "round":
            cv.ellipse(xc, 0.35, 1.4, 0.35, d, shade(stone, 0.85))
            cv.rect(xc - 1.4, 0.0, xc + 1.4, 0.35, d, stone)
        else:
            cv.poly(
                [
                    (xc - 1.4, 0.0),
                    (xc + 1.4, 0.0),
                    (xc + 1.4, 0.45),
                    (xc + 1.0, 0.65),
                    (xc - 1.0, 0.65),
                    (xc - 1.4, 0.45),
                ],
                d,
                stone,
            )
        cv.rect(xc - 0.15, 0.3, xc + 0.15, 1.5, d, shade(stone, 0.9))
        cv.ellipse(xc, 1.55, 0.6, 0.12, d, stone)
        if season != "winter":
            water = (150, 196, 226)
            for k in (-1, 1):
                cv.line([(xc, 1.65), (xc + 0.5 * k, 1.75), (xc + 0.9 * k, 0.7)], d, water, 0.05)
        return cv.cam.box(xc - 1.4, 0.0, xc + 1.4, 1.8, d)
    if cat == "statue":
        stone = (176, 172, 164)
        c = voc.STATUE_MATERIAL_COLOURS[e.attrs["material"]]
        cv.rect(xc - 0.6, 0.0, xc + 0.6, 1.5, d, stone)
        cv.rect(xc - 0.7, 1.4, xc + 0.7, 1.55, d, shade(stone, 0.85))
        if e.attrs["subject"] == "a horse rider":
            cv.ellipse(xc, 2.2, 0.65, 0.28, d, c)
            for xl in (xc - 0.5, xc - 0.3, xc + 0.3, xc + 0.5):
                cv.line([(xl, 2.1), (xl, 1.55)], d, c, 0.08)
            cv.line([(xc + 0.55, 2.3), (xc + 0.85, 2.7)], d, c, 0.16)
            cv.rect(xc - 0.12, 2.35, xc + 0.12, 2.95, d, c)
            cv.ellipse(xc, 3.05, 0.11, 0.11, d, c)
            return cv.cam.box(xc - 0.7, 0.0, xc + 0.9, 3.16, d)
        cv.line([(xc - 0.1, 1.55), (xc - 0.1, 2.35)], d, c, 0.12)
        cv.line([(xc + 0.1, 1.55), (xc + 0.1, 2.35)], d, c, 0.12)
        cv.rect(xc - 0.22, 2.3, xc + 0.22, 3.0, d, c)
        cv.line([(xc + 0.2, 2.95), (xc + 0.45, 3.4)], d, c, 0.09)
        cv.ellipse(xc, 3.13, 0.13, 0.13, d, c)
        return cv.cam.box(xc - 0.7, 0.0, xc + 0.7, 3.42, d)
    if cat == "traffic light":
        c = voc.COLOURS[e.attrs["colour"]]
        cv.rect(xc - 0.06, 0.0, xc + 0.06, 2.4, d, (70, 70, 72))
        cv.rect(xc - 0.18, 2.3, xc + 0.18, 3.3, d, c)
        for k, lamp in enumerate(((220, 40, 30), (230, 170, 30), (40, 200, 80))):
            on = k == stable_hash(e.id) % 3
            cv.ellipse(xc, 3.1 - k * 0.3, 0.1, 0.1, d, lamp if on else shade(lamp, 0.35))
        return cv.cam.box(xc - 0.18, 0.0, xc + 0.18, 3.3, d)
    if cat == "mailbox":
        c = voc.COLOURS[e.attrs["colour"]]
        cv.rect(xc - 0.3, 0.0, xc + 0.3, 0.95, d, c)
        cv.ellipse(xc, 0.95, 0.3, 0.2, d, c)
        cv.rect(xc - 0.18, 0.72, xc + 0.18, 0.77, d, (30, 30, 30))
        return cv.cam.box(xc - 0.3, 0.0, xc + 0.3, 1.15, d)
    raise ValueError(f"no painter for furniture category {cat!r}")


def paint_crosswalk(cv: Canvas, e: SceneElement, x0: float, x1: float, depth: float) -> Box:
    """Stripes lie on the road between the kerbs; the box is the painted area."""
    colour = (240, 240, 232) if e.attrs["style"].startswith("white") else (232, 200, 60)
    d_near, d_far = ROAD_NEAR + 0.2, far_kerb(depth) - 0.2
    d = d_near
    while d < d_far:
        d2 = min(d + 0.5, d_far)
        cv.ground([(x0, d), (x1, d), (x1, d2), (x0, d2)], colour)
        d += 1.0
    cam = cv.cam
    us = [cam.u(x0, d_near), cam.u(x1, d_near), cam.u(x0, d_far), cam.u(x1, d_far)]
    return (min(us), cam.v(0.0, d_far), max(us), cam.v(0.0, d_near))


# --- transients ------------------------------------------------------------------------------


def paint_transient(cv: Canvas, t: TransientSpec) -> Box:
    x, d = t.x, t.depth
    if t.kind == "car":
        half = t.size / 2
        body = t.colour
        cv.rect(x - half, 0.3, x + half, 0.95, d, body)
        cv.poly(
            [
                (x - half * 0.6, 0.95),
                (x + half * 0.5, 0.95),
                (x + half * 0.25, 1.45),
                (x - half * 0.4, 1.45),
            ],
            d,
            shade(body, 0.9),
        )
        cv.poly(
            [
                (x - half * 0.5, 1.0),
                (x + half * 0.4, 1.0),
                (x + half * 0.2, 1.38),
                (x - half * 0.33, 1.38),
            ],
            d,
            (60, 74, 90),
        )
        for xw in (x - half * 0.62, x + half * 0.62):
            cv.ellipse(xw, 0.33, 0.33, 0.33, d, (22, 22, 24))
            cv.ellipse(xw, 0.33, 0.15, 0.15, d, (150, 150, 150))
        return cv.cam.box(x - half, 0.0, x + half, 1.45, d)
    h = t.size
    cv.line([(x - 0.08, 0.0), (x - 0.05, 0.48 * h)], d, (40, 40, 50), 0.13)
    cv.line([(x + 0.08, 0.0), (x + 0.05, 0.48 * h)], d, (40, 40, 50), 0.13)
    cv.rect(x - 0.21, 0.46 * h, x + 0.21, 0.84 * h, d, t.colour)
    cv.ellipse(x, h - 0.12, 0.11, 0.12, d, (214, 176, 146))
    return cv.cam.box(x - 0.22, 0.0, x + 0.22, h, d)
