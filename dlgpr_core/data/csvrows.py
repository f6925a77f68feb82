"""Row-level CSV plumbing shared by the readers.

Both readers need the same tolerance: a BOM, a stray undecodable byte or a malformed
line must cost one row (or the rest of one file), never the whole scan.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from dlgpr_core.data.records import DatasetScan, ImageRecord, SkippedItem


class RowError(ValueError):
    """A single field is bad; the message becomes the skip reason."""


def iter_csv_rows(
    csv_path: Path,
) -> Iterator[tuple[int, dict[str, str | None]] | tuple[int, csv.Error]]:
    """Yield (line number, row) pairs, or one (line, csv.Error) and stop if the file breaks.

    Undecodable bytes are replaced rather than raised, because a decode error surfaces
    mid-file with no usable line number; a replaced character then fails the row's own
    checks (e.g. the image file is not found) and is reported against that row.
    """
    with csv_path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle, restval=None)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, exc
                return
            yield reader.line_num, {k: v for k, v in row.items() if isinstance(k, str)}


class HeaderError(ValueError):
    """The header line itself cannot be read as CSV (a field over the csv module's limit,
    a NUL byte, an unterminated quote): the whole file is unusable until it is fixed."""


def header_of(csv_path: Path) -> list[str]:
    """Read just the header; an empty file has none. Raises `HeaderError` (a ValueError)
    for a header the csv module refuses, so callers report it instead of a traceback."""
    with csv_path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        try:
            first = next(csv.reader(handle), [])
        except csv.Error as exc:
            raise HeaderError(f"malformed CSV header: {exc}") from None
    return [name.strip() for name in first]


def show_header(header: Sequence[str], max_names: int = 20, max_chars: int = 40) -> str:
    """The header for a message: a header of thousands of names, or names of kilobytes,
    would bury the one line that says what is wrong."""
    if not header:
        return "no header"
    shown = [n if len(n) <= max_chars else n[:max_chars] + "..." for n in header[:max_names]]
    more = f" and {len(header) - max_names} more" if len(header) > max_names else ""
    return f"{shown}{more}"


def field(row: Mapping[str, str | None], name: str) -> str:
    """Return a required, non-empty field, stripped."""
    value = row.get(name)
    if value is None or not value.strip():
        raise RowError(f"missing value for column '{name}'")
    return value.strip()


def require(row: Mapping[str, str | None], names: Sequence[str]) -> None:
    """Name every empty required field at once, so one fix repairs the row."""
    missing = [n for n in names if not (row.get(n) or "").strip()]
    if len(missing) == 1:
        raise RowError(f"missing value for column '{missing[0]}'")
    if missing:
        raise RowError("missing values for columns " + ", ".join(f"'{n}'" for n in missing))


def as_int(row: Mapping[str, str | None], name: str, lo: int, hi: int) -> int:
    """Integers only: a '3.5' month or place id is a broken row, not something to round."""
    text = field(row, name)
    try:
        value = int(text)
    except ValueError:
        raise RowError(f"column '{name}' is not an integer: {text!r}") from None
    if not lo <= value <= hi:
        raise RowError(f"column '{name}' = {value} is outside [{lo}, {hi}]")
    return value


def as_float(row: Mapping[str, str | None], name: str, lo: float, hi: float) -> float:
    """Finite floats in range; NaN and inf parse as floats but are never valid coordinates."""
    text = field(row, name)
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"column '{name}' is not a number: {text!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RowError(f"column '{name}' = {text} is outside [{lo:g}, {hi:g}]")
    return value


RowReader = Callable[[dict[str, str | None]], "ImageRecord | SkippedItem"]


def scan_rows(csv_path: Path, label: str, scan: DatasetScan, read_row: RowReader) -> None:
    """Turn every row of one CSV into a record or a skip, so one bad row costs one row.

    `label` names the file in skip reports (``"<label>:<line>"``); `read_row` raises
    `RowError` for a bad field or returns a `SkippedItem` for a bad referenced file.
    """
    for line, row in iter_csv_rows(csv_path):
        source = f"{label}:{line}"
        if isinstance(row, csv.Error):
            scan.skipped.append(SkippedItem(source, f"malformed CSV, rest of file skipped: {row}"))
            return
        try:
            record = read_row(row)
        except RowError as exc:
            scan.skipped.append(SkippedItem(source, str(exc)))
            continue
        if isinstance(record, SkippedItem):
            scan.skipped.append(SkippedItem(f"{source} ({record.source})", record.reason))
        else:
            scan.records.append(record)
