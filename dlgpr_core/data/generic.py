"""Reader for any street-view set described by one CSV: ``image, place_id, lat, lon``.

Optional columns ``heading``, ``date`` and ``city``. With a ``city`` column, place ids are
namespaced by it (as GSV-Cities ids are); without one they are kept as written, because
the CSV author already chose them to be unique within the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from dlgpr_core.data.csvrows import (
    HeaderError,
    RowError,
    as_float,
    field,
    header_of,
    require,
    scan_rows,
    show_header,
)
from dlgpr_core.data.paths import ESCAPES_ROOT, resolve_inside
from dlgpr_core.data.records import DatasetScan, ImageRecord, SkippedItem, namespaced_place_id

REQUIRED_COLUMNS = ("image", "place_id", "lat", "lon")
OPTIONAL_COLUMNS = ("heading", "date", "city")
_DATE_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$")


def scan_csv(csv_path: Path, root: Path | None = None) -> DatasetScan:
    """Scan a CSV-described data set; image paths are relative to ``root``.

    ``root`` defaults to the CSV's folder. A missing required column is a usage error
    (the whole file is unusable and the user must fix the header), so it raises
    ValueError; every per-row problem becomes a `SkippedItem` instead.
    """
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    try:
        header = header_of(csv_path)
    except HeaderError as exc:
        raise ValueError(f"{csv_path}: {exc}; fix the file's first line") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{csv_path}: missing required column(s) {missing}; found {show_header(header)}; "
            f"required: {list(REQUIRED_COLUMNS)}, optional: {list(OPTIONAL_COLUMNS)}"
        )
    label = _label(csv_path, root)
    scan = DatasetScan(root=root)
    scan_rows(csv_path, label, scan, lambda row: _record(root, row))
    return scan


def _label(csv_path: Path, root: Path) -> str:
    """Name the CSV relative to the root when possible, so reports stay short."""
    try:
        return csv_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return csv_path.name


def _record(root: Path, row: Mapping[str, str | None]) -> ImageRecord | SkippedItem:
    require(row, REQUIRED_COLUMNS)
    image = field(row, "image")
    place = field(row, "place_id")
    lat = as_float(row, "lat", -90.0, 90.0)
    lon = as_float(row, "lon", -180.0, 180.0)
    heading = None
    if (row.get("heading") or "").strip():
        heading = as_float(row, "heading", -360.0, 360.0) % 360.0
    date = (row.get("date") or "").strip() or None
    if date is not None and not _DATE_RE.match(date):
        raise RowError(f"column 'date' is not YYYY-MM or YYYY-MM-DD: {date!r}")
    city = (row.get("city") or "").strip()
    resolved = resolve_inside(root, image)
    if resolved is None:
        return SkippedItem(image, ESCAPES_ROOT)
    if not resolved.is_file():
        return SkippedItem(image, "image file not found")
    return ImageRecord(
        path=Path(image).as_posix(),
        place_id=namespaced_place_id(city, place) if city else place,
        lat=lat,
        lon=lon,
        city=city,
        heading=heading,
        date=date,
    )
