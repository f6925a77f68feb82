"""Reader for the GSV-Cities layout: ``Images/<City>/*.jpg`` plus ``Dataframes/<City>.csv``.

The CSV is the source of truth (it carries the coordinates); image file names are derived
from it exactly as GSV-Cities does, with lat/lon copied as the CSV writes them because
re-formatting a float (``42.3500`` vs ``42.35``) would name a file that does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlgpr_core.data.csvrows import (
    HeaderError,
    as_float,
    as_int,
    field,
    header_of,
    require,
    scan_rows,
    show_header,
)
from dlgpr_core.data.paths import ESCAPES_ROOT, resolve_inside
from dlgpr_core.data.records import DatasetScan, ImageRecord, SkippedItem, namespaced_place_id

GSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NAME_RE = re.compile(
    rf"^(?P<city_id>.+?)_(?P<place_id>\d{{7,}})_(?P<year>\d{{4}})_(?P<month>\d{{2}})"
    rf"_(?P<northdeg>\d{{3,}})_(?P<lat>{_NUMBER})_(?P<lon>{_NUMBER})_(?P<panoid>.+)\.jpg$"
)


def gsv_image_name(row: Mapping[str, Any]) -> str:
    """Build the GSV-Cities file name of one CSV row (values may be str or int)."""
    return (
        f"{row['city_id']}_{int(row['place_id']):07d}_{int(row['year']):04d}"
        f"_{int(row['month']):02d}_{int(row['northdeg']):03d}"
        f"_{str(row['lat']).strip()}_{str(row['lon']).strip()}_{row['panoid']}.jpg"
    )


def parse_gsv_image_name(name: str) -> dict[str, Any]:
    """Invert `gsv_image_name`; lat/lon stay strings so the round trip is exact.

    Pano ids may contain underscores, so the pattern anchors on the numeric fields
    instead of splitting on ``_``. Raises ValueError for names not in the GSV pattern.
    """
    match = _NAME_RE.match(Path(name).name)
    if match is None:
        raise ValueError(f"not a GSV-Cities image name: {name!r}")
    parts = match.groupdict()
    return {
        "city_id": parts["city_id"],
        "place_id": int(parts["place_id"]),
        "year": int(parts["year"]),
        "month": int(parts["month"]),
        "northdeg": int(parts["northdeg"]),
        "lat": parts["lat"],
        "lon": parts["lon"],
        "panoid": parts["panoid"],
    }


def list_gsv_cities(root: Path) -> list[str]:
    """City names are the CSV stems; their image folders follow the same name."""
    return sorted(p.stem for p in (root / "Dataframes").glob("*.csv") if p.is_file())


def scan_gsv_cities(root: Path, cities: Sequence[str] | None = None) -> DatasetScan:
    """Scan a GSV-Cities root; bad rows and files become `SkippedItem`s.

    Raises ValueError only for usage errors (no ``Dataframes/``, an unknown city asked
    for), never for bad data.
    """
    root = Path(root)
    if not (root / "Dataframes").is_dir() or not (root / "Images").is_dir():
        raise ValueError(f"{root} is not a GSV-Cities root (needs Dataframes/ and Images/)")
    available = list_gsv_cities(root)
    if cities is None:
        chosen = available
    else:
        lookup = {c.lower(): c for c in available}
        unknown = [c for c in cities if c.lower() not in lookup]
        if unknown:
            raise ValueError(f"unknown GSV cities {unknown}; available: {available}")
        chosen = [lookup[c.lower()] for c in cities]
    scan = DatasetScan(root=root)
    for city in chosen:
        _scan_city(root, city, scan)
    return scan


def _image_dir(root: Path, city: str) -> Path | None:
    """Exact folder name first; fall back to a case-insensitive match (e.g. 'boston')."""
    exact = root / "Images" / city
    if exact.is_dir():
        return exact
    for candidate in sorted((root / "Images").iterdir()):
        if candidate.is_dir() and candidate.name.lower() == city.lower():
            return candidate
    return None


def _scan_city(root: Path, city: str, scan: DatasetScan) -> None:
    csv_rel = f"Dataframes/{city}.csv"
    csv_path = root / csv_rel
    try:
        header = header_of(csv_path)
    except OSError as exc:
        scan.skipped.append(SkippedItem(csv_rel, f"cannot read CSV: {exc}"))
        return
    except HeaderError as exc:
        scan.skipped.append(SkippedItem(csv_rel, str(exc)))
        return
    missing = [c for c in GSV_COLUMNS if c not in header]
    if missing:
        scan.skipped.append(
            SkippedItem(csv_rel, f"missing columns {missing}; found {show_header(header)}")
        )
        return
    image_dir = _image_dir(root, city)
    if image_dir is None:
        scan.skipped.append(SkippedItem(f"Images/{city}", "image folder not found"))
        return
    dir_rel = image_dir.relative_to(root).as_posix()
    scan_rows(csv_path, csv_rel, scan, lambda row: _record(root, city, dir_rel, row))


def _record(
    root: Path, city: str, dir_rel: str, row: Mapping[str, str | None]
) -> ImageRecord | SkippedItem:
    require(row, GSV_COLUMNS)
    place_id = as_int(row, "place_id", 0, 10**12)
    year = as_int(row, "year", 1000, 9999)
    month = as_int(row, "month", 1, 12)
    northdeg = as_int(row, "northdeg", 0, 360)
    lat = as_float(row, "lat", -90.0, 90.0)
    lon = as_float(row, "lon", -180.0, 180.0)
    values = {
        "city_id": field(row, "city_id"),
        "place_id": place_id,
        "year": year,
        "month": month,
        "northdeg": northdeg,
        "lat": field(row, "lat"),
        "lon": field(row, "lon"),
        "panoid": field(row, "panoid"),
    }
    rel = f"{dir_rel}/{gsv_image_name(values)}"
    resolved = resolve_inside(root, rel)
    if resolved is None:
        return SkippedItem(rel, ESCAPES_ROOT)
    if not resolved.is_file():
        return SkippedItem(rel, "image file not found")
    return ImageRecord(
        path=rel,
        place_id=namespaced_place_id(city, place_id),
        lat=lat,
        lon=lon,
        city=city,
        heading=float(northdeg),
        date=f"{year:04d}-{month:02d}",
    )
