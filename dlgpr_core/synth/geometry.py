"""Camera model and fixed depths of the synthetic street.

A pinhole camera on the near pavement looks straight across the street at the far
facades. Panning the camera along the street and zooming changes what is in frame,
while the metric layout (and so every annotated box) follows exactly from projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CAMERA_HEIGHT = 2.0
"""Metres above the ground (a car-roof camera, as for street-view imagery)."""
NEAR_DEPTH = 4.3
"""Depth of furniture on the near pavement, right in front of the camera."""
ROAD_NEAR = 5.6
"""Depth of the near kerb."""
FAR_PAVEMENT = 3.2
"""Width of the far pavement (between far kerb and facades)."""
FLOOR_HEIGHT = 3.2
HORIZON = 0.56
"""Horizon line as a fraction of image height: a slightly downward-looking camera."""


def facade_depth(street_width: str) -> float:
    """Depth of the far facades; a wide street puts them further away (smaller)."""
    return 14.0 if street_width == "narrow" else 19.0


def far_kerb(depth: float) -> float:
    return depth - FAR_PAVEMENT


@dataclass(frozen=True)
class Camera:
    """Projects street coordinates ``(x along the street, height, depth)`` to pixels."""

    width: int
    height: int
    f: float
    cx: float
    horizon: float
    cam_x: float

    @classmethod
    def for_view(cls, size: tuple[int, int], cam_x: float, yaw_deg: float, zoom: float) -> Camera:
        w, h = size
        f = zoom * w / 2.0
        # Turning right (positive yaw) moves the scene left in the image.
        cx = w / 2.0 - f * math.tan(math.radians(yaw_deg))
        return cls(w, h, f, cx, HORIZON * h, cam_x)

    def u(self, x: float, depth: float) -> float:
        return self.cx + self.f * (x - self.cam_x) / depth

    def v(self, h: float, depth: float) -> float:
        return self.horizon + self.f * (CAMERA_HEIGHT - h) / depth

    def scale(self, depth: float) -> float:
        """Pixels per metre at ``depth``."""
        return self.f / depth

    def x_at(self, u: float, depth: float) -> float:
        """Inverse of `u`: which street position is seen at column ``u``."""
        return self.cam_x + (u - self.cx) * depth / self.f

    def box(
        self, x0: float, h0: float, x1: float, h1: float, depth: float
    ) -> tuple[float, float, float, float]:
        """Screen box of an upright rectangle in the plane at ``depth``."""
        return (self.u(x0, depth), self.v(h1, depth), self.u(x1, depth), self.v(h0, depth))


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int, min_size: int = 2
) -> list[int] | None:
    """Integer box clipped to the image, or ``None`` when out of frame or too thin to label."""
    x0 = max(0, math.floor(box[0]))
    y0 = max(0, math.floor(box[1]))
    x1 = min(width, math.ceil(box[2]))
    y1 = min(height, math.ceil(box[3]))
    if x1 - x0 < min_size or y1 - y0 < min_size:
        return None
    return [x0, y0, x1, y1]


def union(
    boxes: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
