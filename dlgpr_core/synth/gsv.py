"""GSV-Cities naming: file names, CSV rows, coordinates and pano ids.

SynthCities writes exactly the GSV-Cities on-disk layout so that every reader, trainer
and evaluator of the project runs unchanged on synthetic and real data.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

CSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
PLACE_SPACING_M = 120.0
"""Grid spacing; with at most 5 m of camera travel per view, places stay >= 100 m apart."""
METRES_PER_DEGREE = 111_320.0
_PANO_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
CITY_NAME = re.compile(r"[A-Za-z0-9-]+")
"""No underscores: they separate the fields of a GSV-Cities file name."""


def format_coord(x: float) -> str:
    """Formatted once and reused for both the file name and the CSV, so they always agree."""
    return f"{x:.6f}"


def city_hash(city: str) -> int:
    return zlib.crc32(city.encode("utf-8"))


def panoid(city: str, seed: int, place_id: int, view: int) -> str:
    """A deterministic 22-character id shaped like a Street View pano id (no underscore)."""
    digest = hashlib.sha256(f"{city}:{seed}:{place_id}:{view}".encode()).digest()
    return "".join(_PANO_ALPHABET[b % len(_PANO_ALPHABET)] for b in digest[:22])


@dataclass(frozen=True)
class GsvImage:
    """One row of a GSV-Cities dataframe; the file name is derived from it."""

    city_id: str
    place_id: int
    year: int
    month: int
    northdeg: int
    lat: str
    lon: str
    panoid: str

    @property
    def filename(self) -> str:
        return (
            f"{self.city_id}_{self.place_id:07d}_{self.year:04d}_{self.month:02d}_"
            f"{self.northdeg:03d}_{self.lat}_{self.lon}_{self.panoid}.jpg"
        )

    def csv_row(self) -> list[str]:
        return [
            str(self.place_id),
            str(self.year),
            str(self.month),
            str(self.northdeg),
            self.city_id,
            self.lat,
            self.lon,
            self.panoid,
        ]

    @classmethod
    def parse_filename(cls, name: str) -> GsvImage:
        """Inverse of `filename` (the city is everything before the last seven fields)."""
        stem = name.removesuffix(".jpg")
        city, place, year, month, north, lat, lon, pano = stem.rsplit("_", 7)
        return cls(city, int(place), int(year), int(month), int(north), lat, lon, pano)


@dataclass(frozen=True)
class PlaceLocation:
    lat: float
    lon: float
    street_bearing: float
    """Direction the street runs, degrees from north."""
    facade_heading: float
    """Heading of a camera looking straight at the described facades."""


def base_latlon(seed: int, city: str) -> tuple[float, float]:
    rng = np.random.default_rng([seed, city_hash(city), 7])
    return float(rng.uniform(-45.0, 60.0)), float(rng.uniform(-170.0, 170.0))


def offset(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    dlat = north_m / METRES_PER_DEGREE
    dlon = east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def place_location(base: tuple[float, float], place_id: int, n_places: int) -> PlaceLocation:
    """One place per block of a square street grid, alternating street directions."""
    cols = max(1, math.ceil(math.sqrt(n_places)))
    row, col = divmod(place_id, cols)
    lat, lon = offset(base[0], base[1], col * PLACE_SPACING_M, row * PLACE_SPACING_M)
    bearing = 90.0 if row % 2 == 0 else 0.0
    heading = (bearing + (90.0 if col % 2 == 0 else 270.0)) % 360.0
    return PlaceLocation(lat, lon, bearing, heading)


def view_latlon(loc: PlaceLocation, along_m: float) -> tuple[float, float]:
    """The camera moved ``along_m`` metres along the street from the place centre, towards
    the image's right-hand side (the positive street axis of the scene)."""
    rad = math.radians(loc.facade_heading + 90.0)
    return offset(loc.lat, loc.lon, along_m * math.sin(rad), along_m * math.cos(rad))
