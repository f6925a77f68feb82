"""Drawing in street coordinates (metres) instead of pixels.

Painters describe shapes in the metric frame of the street so that one shape serves
every view; the canvas projects them with the view's camera. Shapes entirely off
screen are skipped, which keeps a 1,000-place city fast to render.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from dlgpr_core.synth.geometry import Camera
from dlgpr_core.synth.vocabulary import RGB

Point = tuple[float, float]
Box = tuple[float, float, float, float]


def shade(c: RGB, k: float) -> RGB:
    return (min(255, int(c[0] * k)), min(255, int(c[1] * k)), min(255, int(c[2] * k)))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def stable_hash(text: str) -> int:
    """Python's ``hash`` is salted per process; pixels must not depend on it."""
    return zlib.crc32(text.encode("utf-8"))


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font: available offline and identical on every machine."""
    return ImageFont.load_default(size=size)


class Canvas:
    """An image plus the camera that maps the street onto it."""

    def __init__(self, image: Image.Image, cam: Camera) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.cam = cam
        self.glow: list[tuple[Box, RGB]] = []
        """Lit windows and lamps, painted after the dusk tint so that they still shine."""

    def _visible(self, u0: float, u1: float) -> bool:
        return u1 >= 0 and u0 <= self.cam.width

    def rect(
        self,
        x0: float,
        h0: float,
        x1: float,
        h1: float,
        d: float,
        fill: RGB,
        glow: bool = False,
    ) -> None:
        """Upright rectangle in the vertical plane at depth ``d``."""
        b = self.cam.box(x0, h0, x1, h1, d)
        if not self._visible(b[0], b[2]):
            return
        self.draw.rectangle(b, fill=fill)
        if glow:
            self.glow.append((b, fill))

    def rounded(self, x0: float, h0: float, x1: float, h1: float, d: float, fill: RGB) -> None:
        b = self.cam.box(x0, h0, x1, h1, d)
        if not self._visible(b[0], b[2]):
            return
        radius = max(0, int(min(b[2] - b[0], b[3] - b[1]) / 3))
        self.draw.rounded_rectangle(b, radius=radius, fill=fill)

    def poly(self, pts: list[Point], d: float, fill: RGB) -> None:
        """Polygon in the vertical plane at depth ``d``; points are ``(x, height)``."""
        px = [(self.cam.u(x, d), self.cam.v(h, d)) for x, h in pts]
        if not self._visible(min(p[0] for p in px), max(p[0] for p in px)):
            return
        self.draw.polygon(px, fill=fill)

    def ellipse(self, xc: float, hc: float, rx: float, rh: float, d: float, fill: RGB) -> None:
        b = self.cam.box(xc - rx, hc - rh, xc + rx, hc + rh, d)
        if not self._visible(b[0], b[2]):
            return
        self.draw.ellipse(b, fill=fill)

    def line(self, pts: list[Point], d: float, fill: RGB, width_m: float) -> None:
        px = [(self.cam.u(x, d), self.cam.v(h, d)) for x, h in pts]
        if not self._visible(min(p[0] for p in px), max(p[0] for p in px)):
            return
        self.draw.line(px, fill=fill, width=max(1, round(width_m * self.cam.scale(d))))

    def ground(self, pts: list[Point], fill: RGB) -> None:
        """Polygon lying on the ground; points are ``(x, depth)``."""
        px = [(self.cam.u(x, d), self.cam.v(0.0, d)) for x, d in pts]
        if not self._visible(min(p[0] for p in px), max(p[0] for p in px)):
            return
        self.draw.polygon(px, fill=fill)

    def band(self, d_far: float, d_near: float, fill: RGB) -> None:
        """The full-width strip of ground between two depths (the camera looks straight
        across the street, so such strips are horizontal in the image)."""
        y0 = self.cam.v(0.0, d_far)
        y1 = self.cam.v(0.0, d_near) if d_near > 0 else float(self.cam.height)
        self.draw.rectangle((0, y0, self.cam.width, y1), fill=fill)

    def text(
        self, xc: float, hc: float, d: float, text: str, max_w: float, max_h: float, fill: RGB
    ) -> None:
        """Centred text shrunk to fit ``max_w`` x ``max_h`` metres; skipped when unreadable."""
        s = self.cam.scale(d)
        u, v = self.cam.u(xc, d), self.cam.v(hc, d)
        if not self._visible(u - max_w * s, u + max_w * s):
            return
        size = int(max_h * s * 0.85)
        while size >= 5:
            f = font(size)
            if f.getlength(text) <= max_w * s:
                self.draw.text((u, v), text, fill=fill, font=f, anchor="mm")
                return
            size -= 1
        # Too small to be legible: suggest lettering with a thin line, like a distant sign.
        self.draw.line([(u - max_w * s * 0.35, v), (u + max_w * s * 0.35, v)], fill=fill, width=1)
