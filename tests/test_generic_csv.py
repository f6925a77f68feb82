"""Generic CSV reader: required/optional columns, bad rows, paths escaping the root."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dlgpr_core.data import scan_dataset
from dlgpr_core.data.generic import scan_csv
from dlgpr_core.data.paths import resolve_inside


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def write(csv_path: Path, lines: list[str]) -> Path:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def test_reads_required_and_optional_columns(tmp_path: Path) -> None:
    image(tmp_path / "img" / "a.jpg")
    image(tmp_path / "img" / "b.jpg")
    csv_path = write(
        tmp_path / "set.csv",
        [
            "image,place_id,lat,lon,heading,date,city",
            "img/a.jpg,p1,48.1,11.5,-10,2020-05,Munich",
            "img/b.jpg,p2,48.2,11.6,,,",
        ],
    )
    scan = scan_csv(csv_path)
    assert scan.skipped == []
    a, b = scan.records
    assert (a.path, a.place_id, a.heading, a.date, a.city) == (
        "img/a.jpg",
        "Munich:p1",
        350.0,
        "2020-05",
        "Munich",
    )
    assert (b.place_id, b.heading, b.date, b.city) == ("p2", None, None, "")


def test_missing_header_column_names_missing_and_found(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "set.csv", ["image,lat,longitude", "a.jpg,1,2"])
    with pytest.raises(
        ValueError, match=r"missing required column\(s\) \['place_id', 'lon'\]"
    ) as e:
        scan_csv(csv_path)
    assert "found ['image', 'lat', 'longitude']" in str(e.value)


def test_bad_rows_are_skipped_with_line_and_reason(tmp_path: Path) -> None:
    image(tmp_path / "a.jpg")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    image(outside)
    (tmp_path / "link.jpg").symlink_to(outside)
    csv_path = write(
        tmp_path / "set.csv",
        [
            "image,place_id,lat,lon,date",
            "a.jpg,p1,1.0,2.0,",
            "a.jpg,p1,north,2.0,",
            "a.jpg,p1,95,2.0,",
            "a.jpg,,1.0,2.0,",
            "a.jpg,p1,1.0",
            "missing.jpg,p1,1.0,2.0,",
            "../escape.jpg,p1,1.0,2.0,",
            f"{tmp_path / 'a.jpg'},p1,1.0,2.0,",
            "link.jpg,p1,1.0,2.0,",
            "a.jpg,p1,1.0,2.0,May 2020",
        ],
    )
    scan = scan_csv(csv_path)
    assert len(scan.records) == 1
    got = [(s.source.split(" ")[0], s.reason) for s in scan.skipped]
    assert got[0] == ("set.csv:3", "column 'lat' is not a number: 'north'")
    assert got[1] == ("set.csv:4", "column 'lat' = 95 is outside [-90, 90]")
    assert got[2] == ("set.csv:5", "missing value for column 'place_id'")
    assert got[3] == ("set.csv:6", "missing value for column 'lon'")
    assert got[4] == ("set.csv:7", "image file not found")
    assert got[5:8] == [(f"set.csv:{n}", "path escapes dataset root") for n in (8, 9, 10)]
    assert got[8][0] == "set.csv:11" and "date" in got[8][1]


def test_root_overrides_csv_folder(tmp_path: Path) -> None:
    image(tmp_path / "data" / "x.jpg")
    csv_path = write(tmp_path / "meta" / "list.csv", ["image,place_id,lat,lon", "x.jpg,1,0,0"])
    assert scan_csv(csv_path).records == []
    assert len(scan_csv(csv_path, root=tmp_path / "data").records) == 1


def test_resolve_inside(tmp_path: Path) -> None:
    image(tmp_path / "a" / "x.jpg")
    assert resolve_inside(tmp_path, "a/../a/x.jpg") == (tmp_path / "a" / "x.jpg").resolve()
    assert resolve_inside(tmp_path, "../x.jpg") is None
    assert resolve_inside(tmp_path, "/etc/passwd") is None
    assert resolve_inside(tmp_path, "C:\\x.jpg") is None
    assert resolve_inside(tmp_path, "") is None


def test_scan_dataset_detects_csv(tmp_path: Path) -> None:
    image(tmp_path / "x.jpg")
    csv_path = write(tmp_path / "list.csv", ["image,place_id,lat,lon", "x.jpg,1,0,0"])
    assert len(scan_dataset(csv_path).records) == 1
    assert len(scan_dataset(tmp_path).records) == 1
    with pytest.raises(ValueError, match="cannot tell the data set format"):
        scan_dataset(tmp_path / "x.jpg")


def test_malformed_header_is_a_clear_error(tmp_path: Path) -> None:
    """A header field over the csv module's limit is a usage error naming the file."""
    csv_path = tmp_path / "set.csv"
    csv_path.write_text('"' + "x" * 200_000 + '"\n')
    with pytest.raises(ValueError, match="malformed CSV header") as e:
        scan_csv(csv_path)
    assert str(csv_path) in str(e.value) and len(str(e.value)) < 1000
