"""Street-view data set readers; `scan_dataset` picks one from the on-disk layout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dlgpr_core.data.generic import scan_csv
from dlgpr_core.data.gsv import scan_gsv_cities
from dlgpr_core.data.paths import resolve_inside
from dlgpr_core.data.records import DatasetScan, ImageRecord, SkippedItem, namespaced_place_id

DatasetFormat = Literal["auto", "gsv", "csv"]

__all__ = [
    "DatasetFormat",
    "DatasetScan",
    "ImageRecord",
    "SkippedItem",
    "detect_format",
    "namespaced_place_id",
    "resolve_inside",
    "scan_csv",
    "scan_dataset",
    "scan_gsv_cities",
]


def detect_format(path: Path) -> Literal["gsv", "csv"]:
    """Guess the layout so the CLI needs no format flag for the two common cases."""
    path = Path(path)
    if path.is_dir() and (path / "Dataframes").is_dir() and (path / "Images").is_dir():
        return "gsv"
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_dir() and len(list(path.glob("*.csv"))) == 1:
        return "csv"
    raise ValueError(
        f"cannot tell the data set format of {path}: expected a GSV-Cities root "
        "(with Dataframes/ and Images/), a .csv file, or a folder holding exactly one .csv"
    )


def scan_dataset(
    path: Path,
    fmt: DatasetFormat | str = "auto",
    *,
    cities: Sequence[str] | None = None,
    root: Path | None = None,
) -> DatasetScan:
    """Scan ``path`` as GSV-Cities (``cities`` filters) or a CSV (``root`` overrides its folder).

    ``fmt`` also takes a plain str (CLI option values); anything but auto/gsv/csv raises.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data set not found: {path}")
    chosen = detect_format(path) if fmt == "auto" else fmt
    if chosen == "gsv":
        return scan_gsv_cities(path, cities)
    if chosen == "csv":
        csv_path = path if path.is_file() else next(iter(sorted(path.glob("*.csv"))), path)
        return scan_csv(csv_path, root)
    raise ValueError(f"unknown data set format {fmt!r}; use 'auto', 'gsv' or 'csv'")
