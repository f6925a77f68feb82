"""GSV-Cities reader: file names, scanning, each bad-row case, place-id namespacing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from dlgpr_core.data import scan_dataset
from dlgpr_core.data.gsv import GSV_COLUMNS, gsv_image_name, parse_gsv_image_name, scan_gsv_cities

ROW = {
    "place_id": "12",
    "year": "2017",
    "month": "6",
    "northdeg": "45",
    "city_id": "Boston",
    "lat": "42.3500",
    "lon": "-71.0600",
    "panoid": "aB_c-d_EfG",
}


def row(**overrides: str) -> dict[str, str]:
    return {**ROW, **overrides}


def write_city(root: Path, city: str, rows: list[dict[str, str]], images: bool = True) -> None:
    """Write Dataframes/<city>.csv and (optionally) a tiny JPEG per row."""
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    (root / "Images" / city).mkdir(parents=True, exist_ok=True)
    with (root / "Dataframes" / f"{city}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if images:
        for r in rows:
            try:
                name = gsv_image_name(r)
            except (ValueError, KeyError):
                continue
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "Images" / city / name)


def test_name_matches_gsv_convention() -> None:
    assert gsv_image_name(ROW) == "Boston_0000012_2017_06_045_42.3500_-71.0600_aB_c-d_EfG.jpg"


def test_name_round_trip_keeps_lat_lon_strings_and_underscored_panoid() -> None:
    name = gsv_image_name(ROW)
    parsed = parse_gsv_image_name(name)
    assert parsed["place_id"] == 12
    assert parsed["lat"] == "42.3500"
    assert parsed["lon"] == "-71.0600"
    assert parsed["panoid"] == "aB_c-d_EfG"
    assert gsv_image_name(parsed) == name


def test_parse_rejects_foreign_names() -> None:
    with pytest.raises(ValueError, match="not a GSV-Cities image name"):
        parse_gsv_image_name("holiday.jpg")


def test_scan_yields_records_with_date_heading_and_city(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row(), row(place_id="13", panoid="x")])
    scan = scan_gsv_cities(tmp_path)
    assert scan.skipped == []
    assert [r.place_id for r in scan.records] == ["Boston:12", "Boston:13"]
    first = scan.records[0]
    assert first.path == f"Images/Boston/{gsv_image_name(ROW)}"
    assert (first.date, first.heading, first.city) == ("2017-06", 45.0, "Boston")
    assert (first.lat, first.lon) == (42.35, -71.06)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (row(lat="north"), "'lat' is not a number"),
        (row(lat="91.0"), "'lat' = 91.0 is outside"),
        (row(lon="-181"), "'lon' = -181 is outside"),
        (row(lat="nan"), "'lat' = nan is outside"),
        (row(month="13"), "'month' = 13 is outside"),
        (row(year="17.5"), "'year' is not an integer"),
        (row(place_id="-1"), "'place_id' = -1 is outside"),
        (row(panoid=""), "missing value for column 'panoid'"),
        (row(northdeg=""), "missing value for column 'northdeg'"),
    ],
)
def test_each_bad_row_is_skipped_with_line_and_reason(
    tmp_path: Path, bad: dict[str, str], reason: str
) -> None:
    write_city(tmp_path, "Boston", [row(place_id="1", panoid="ok"), bad])
    scan = scan_gsv_cities(tmp_path)
    assert [r.place_id for r in scan.records] == ["Boston:1"]
    assert len(scan.skipped) == 1
    assert scan.skipped[0].source == "Dataframes/Boston.csv:3"
    assert reason in scan.skipped[0].reason


def test_short_row_and_missing_image_are_skipped(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row(place_id="1", panoid="ok"), row(place_id="2")])
    (tmp_path / "Images" / "Boston" / gsv_image_name(row(place_id="2"))).unlink()
    with (tmp_path / "Dataframes" / "Boston.csv").open("a") as handle:
        handle.write("3,2017,6\n")
    scan = scan_gsv_cities(tmp_path)
    assert len(scan.records) == 1
    reasons = {s.source.split(" ")[0]: s.reason for s in scan.skipped}
    assert reasons["Dataframes/Boston.csv:3"] == "image file not found"
    assert "missing values for columns 'northdeg', 'city_id'" in reasons["Dataframes/Boston.csv:4"]


def test_csv_missing_columns_skips_the_file_not_the_scan(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row()])
    (tmp_path / "Dataframes" / "Paris.csv").write_text("place_id,lat\n1,48.8\n")
    (tmp_path / "Images" / "Paris").mkdir()
    scan = scan_gsv_cities(tmp_path)
    assert len(scan.records) == 1
    assert scan.skipped[0].source == "Dataframes/Paris.csv"
    assert "missing columns" in scan.skipped[0].reason
    assert "panoid" in scan.skipped[0].reason


def test_city_id_cannot_escape_the_root(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row(city_id="../../../outside")], images=False)
    scan = scan_gsv_cities(tmp_path)
    assert scan.records == []
    assert scan.skipped[0].reason == "path escapes dataset root"


def test_symlinked_image_pointing_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "gsv"
    write_city(root, "Boston", [row()], images=False)
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "Images" / "Boston" / gsv_image_name(ROW)).symlink_to(outside)
    scan = scan_gsv_cities(root)
    assert scan.records == []
    assert scan.skipped[0].reason == "path escapes dataset root"


def test_place_ids_are_namespaced_across_cities(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row(place_id="7")])
    write_city(tmp_path, "Paris", [row(place_id="7", city_id="Paris", lat="48.85", lon="2.35")])
    scan = scan_gsv_cities(tmp_path)
    assert sorted(r.place_id for r in scan.records) == ["Boston:7", "Paris:7"]
    assert [r.place_id for r in scan_gsv_cities(tmp_path, ["paris"]).records] == ["Paris:7"]
    with pytest.raises(ValueError, match="unknown GSV cities"):
        scan_gsv_cities(tmp_path, ["Tokyo"])


def test_scan_dataset_detects_gsv(tmp_path: Path) -> None:
    write_city(tmp_path, "Boston", [row()])
    assert len(scan_dataset(tmp_path).records) == 1


def test_malformed_header_skips_the_file_with_a_reason(tmp_path: Path) -> None:
    """A 200 KB header field (over the csv module's field limit) or a NUL byte costs that
    city's CSV, named with what was wrong, never a traceback; other cities still scan."""
    write_city(tmp_path, "Boston", [row()])
    (tmp_path / "Dataframes" / "Paris.csv").write_text('"' + "x" * 200_000 + '"\nplace_id\n')
    (tmp_path / "Images" / "Paris").mkdir()
    (tmp_path / "Dataframes" / "Rome.csv").write_bytes(b"place_id,\x00year\n1,2\n")
    (tmp_path / "Images" / "Rome").mkdir()
    scan = scan_gsv_cities(tmp_path)
    assert len(scan.records) == 1
    reasons = {s.source: s.reason for s in scan.skipped}
    assert "malformed CSV header" in reasons["Dataframes/Paris.csv"]
    assert "field larger than field limit" in reasons["Dataframes/Paris.csv"]
    assert len(reasons["Dataframes/Paris.csv"]) < 500
    assert reasons["Dataframes/Rome.csv"].startswith(("malformed CSV header", "missing columns"))


def test_long_header_names_are_shortened_in_the_reason(tmp_path: Path) -> None:
    """Under the field limit but huge: the skip reason stays readable."""
    (tmp_path / "Dataframes").mkdir()
    (tmp_path / "Images" / "Oslo").mkdir(parents=True)
    names = ",".join(f"col{i}_" + "y" * 500 for i in range(300))
    (tmp_path / "Dataframes" / "Oslo.csv").write_text(names + "\n")
    scan = scan_gsv_cities(tmp_path)
    (skip,) = scan.skipped
    assert "missing columns" in skip.reason and len(skip.reason) < 2000
