"""SynthCities: determinism, annotation validity, GSV-Cities layout, ambiguity."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from dlgpr_core.data.annotations import (
    Region,
    read_annotations,
    validate_place,
    word_count,
    write_annotations,
)
from dlgpr_core.synth import CityManifest, generate_city, manifest_path
from dlgpr_core.synth.city import plan_city
from dlgpr_core.synth.gsv import CSV_COLUMNS, GsvImage

CITY = "Synthburg"
SMALL = (160, 120)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CityManifest]:
    root = tmp_path_factory.mktemp("synth")
    manifest = generate_city(root, CITY, n_places=24, views_per_place=4, seed=5, progress=False)
    return root, manifest


def test_same_seed_gives_identical_files_for_any_worker_count(tmp_path: Path) -> None:
    kwargs = {
        "n_places": 6,
        "views_per_place": 3,
        "seed": 11,
        "image_size": SMALL,
        "progress": False,
    }
    generate_city(tmp_path / "a", CITY, **kwargs)  # type: ignore[arg-type]
    generate_city(tmp_path / "b", CITY, workers=2, **kwargs)  # type: ignore[arg-type]
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6 * 3 + 3
    assert a == b


def test_different_seed_gives_different_city(tmp_path: Path) -> None:
    for seed in (1, 2):
        generate_city(tmp_path / str(seed), CITY, 4, 2, seed=seed, image_size=SMALL, progress=False)
    for rel in (f"Dataframes/{CITY}.csv", f"Annotations/{CITY}.jsonl"):
        assert (tmp_path / "1" / rel).read_bytes() != (tmp_path / "2" / rel).read_bytes()


def test_every_place_passes_validation(city: tuple[Path, CityManifest]) -> None:
    root, manifest = city
    places = read_annotations(root / manifest.annotations)
    assert [p.place_id for p in places] == list(range(manifest.n_places))
    for p in places:
        assert validate_place(p) == [], p.place_id
        assert 100 <= word_count(p.description) <= 260
        for f in p.facts:
            assert f.mention in p.description
        for v in p.views:
            for box in [r.bbox for r in v.regions] + [t.bbox for t in v.transients]:
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= v.width and 0 <= y0 < y1 <= v.height
            assert v.regions, "every view shows at least one described element"


def test_views_share_the_static_layout(city: tuple[Path, CityManifest]) -> None:
    root, manifest = city
    for p in read_annotations(root / manifest.annotations):
        ids = {e.id for e in p.elements}
        described = {f.element_id for f in p.facts}
        assert {e.id for e in p.elements if e.kind == "building"} <= described
        seen = [{r.element_id for r in v.regions} for v in p.views]
        assert all(s <= ids for s in seen)
        # Any two views have a building in common: a place is recognisable across views.
        for s, t in itertools.combinations(seen, 2):
            assert {i for i in s & t if i.startswith("b")}, p.place_id
        assert len({(v.conditions["season"], v.conditions["time_of_day"]) for v in p.views}) > 1


TRANSIENT_WORDS = re.compile(
    r"\b(cars?|vehicles?|pedestrians?|people|person|traffic jam|snow|winter|summer|autumn|"
    r"spring|dusk|evening|night|morning)\b"
)
"""Lower case only: chain names such as "Morning Cup" are static signage, not a time of day."""


def test_descriptions_state_static_elements_only(city: tuple[Path, CityManifest]) -> None:
    root, manifest = city
    places = read_annotations(root / manifest.annotations)
    assert any(v.transients for p in places for v in p.views)
    for p in places:
        assert not TRANSIENT_WORDS.search(p.description), p.description
        assert not TRANSIENT_WORDS.search(p.caption), p.caption
        assert {e.kind for e in p.elements} <= {
            "building",
            "furniture",
            "vegetation",
            "marking",
            "street",
        }


def test_gsv_cities_layout(city: tuple[Path, CityManifest]) -> None:
    root, manifest = city
    with (root / manifest.csv).open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    rows = rows[1:]
    assert len(rows) == manifest.n_images == 24 * 4
    files = sorted((root / "Images" / CITY).iterdir())
    assert len(files) == len(rows)
    assert {tuple(GsvImage.parse_filename(f.name).csv_row()) for f in files} == {
        tuple(r) for r in rows
    }
    for row in rows:
        img = GsvImage(row[4], int(row[0]), int(row[1]), int(row[2]), int(row[3]), *row[5:])
        assert (
            img.filename == f"{CITY}_{int(row[0]):07d}_{int(row[1]):04d}_{int(row[2]):02d}_"
            f"{int(row[3]):03d}_{row[5]}_{row[6]}_{row[7]}.jpg"
        )
        assert len(img.panoid) == 22 and 0 <= img.northdeg < 360 and img.city_id == CITY
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (320, 240)
    # Annotation image paths point at the files, relative to the data set root.
    places = read_annotations(root / manifest.annotations)
    assert {v.image for p in places for v in p.views} == {f"Images/{CITY}/{f.name}" for f in files}
    assert manifest_path(root, CITY).is_file()


def test_project_gsv_reader_reads_the_city_without_complaint(
    city: tuple[Path, CityManifest],
) -> None:
    from dlgpr_core.data.gsv import scan_gsv_cities

    root, manifest = city
    scan = scan_gsv_cities(root)
    assert scan.skipped == []
    assert len(scan.records) == manifest.n_images
    assert {r.place_id for r in scan.records} == {f"{CITY}:{i}" for i in range(manifest.n_places)}


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dlat = (a[0] - b[0]) * 111_320.0
    dlon = (a[1] - b[1]) * 111_320.0 * math.cos(math.radians(a[0]))
    return math.hypot(dlat, dlon)


def test_places_are_at_least_100_m_apart(city: tuple[Path, CityManifest]) -> None:
    root, manifest = city
    with (root / manifest.csv).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_place: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_place.setdefault(r["place_id"], []).append((float(r["lat"]), float(r["lon"])))
    for (_, a), (_, b) in itertools.combinations(by_place.items(), 2):
        assert min(_metres(x, y) for x in a for y in b) >= 100.0
    for views in by_place.values():
        assert max(_metres(x, y) for x in views for y in views) < 15.0


def _caption_matches(difficulty: float, n: int = 40) -> list[int]:
    """For each place: how many places contain every element category its caption names."""
    plans, _ = plan_city(CITY, n, 1, seed=3, difficulty=difficulty)
    inventories = [Counter(e.category for e in p.scene.elements) for p in plans]
    out = []
    for p in plans:
        wanted = {p.scene.get(i).category for i in p.scene.caption_ids}
        out.append(sum(all(inv[c] for c in wanted) for inv in inventories))
    return out


def test_high_difficulty_makes_captions_ambiguous() -> None:
    hard, easy = _caption_matches(0.95), _caption_matches(0.05)
    assert min(hard) >= 10
    assert sum(hard) > sum(easy)
    plans, _ = plan_city(CITY, 40, 1, seed=3, difficulty=0.95)
    # ... yet the fine-grained descriptions still tell every place apart.
    assert len({p.text.description for p in plans}) == 40


def test_read_annotations_names_file_and_line(
    city: tuple[Path, CityManifest], tmp_path: Path
) -> None:
    root, manifest = city
    good = (root / manifest.annotations).read_text().splitlines()[0]
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + '{"city": "X", "place_id": -1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        read_annotations(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_annotations(path)


@pytest.mark.parametrize(
    "image",
    ["/etc/passwd", "../outside.jpg", "Images/../../x.jpg", "C:\\x.jpg", "Images\\..\\..\\x.jpg",
     "", "a\x00b.jpg", "//server/share/x.jpg"],
)  # fmt: skip
def test_annotation_image_paths_must_stay_inside_the_data_set(
    city: tuple[Path, CityManifest], tmp_path: Path, image: str
) -> None:
    """A view's image is a path relative to the data set root: absolute paths and ``..``
    are refused on load, naming file, line and the path (annotation files come from
    converters and the internet, like CSV rows)."""
    root, manifest = city
    record = json.loads((root / manifest.annotations).read_text().splitlines()[0])
    record["views"][0]["image"] = image
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1") as e:
        read_annotations(path)
    assert "image" in str(e.value)


def test_annotation_image_symlinked_outside_is_refused(
    city: tuple[Path, CityManifest], tmp_path: Path
) -> None:
    """A relative path that is a symlink leading out of the root is judged by where it
    ends (`resolve_inside`), by every reader that opens annotation images."""
    from dlgpr_core.data.annotations import view_image_path
    from dlgpr_core.retriever.data import read_places

    root, manifest = city
    place = read_annotations(root / manifest.annotations)[0]
    data = tmp_path / "data"
    (data / "Annotations").mkdir(parents=True)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    for view in place.views:
        target = data / view.image
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(secret)
    write_annotations(data / "Annotations" / f"{CITY}.jsonl", [place])
    with pytest.raises(ValueError, match="escapes dataset root"):
        view_image_path(data, place.views[0])
    with pytest.raises(ValueError, match="escapes dataset root"):
        read_places(data, [CITY])
    # Inside the root, a symlink is fine.
    inside = data / "Images" / "real.jpg"
    Image.new("RGB", (8, 8)).save(inside)
    for view in place.views:
        (data / view.image).unlink()
        (data / view.image).symlink_to(inside)
    assert len(read_places(data, [CITY])) == 1


def test_validate_place_reports_broken_cross_references(
    city: tuple[Path, CityManifest], tmp_path: Path
) -> None:
    root, manifest = city
    place = read_annotations(root / manifest.annotations)[0]
    broken = place.model_copy(deep=True)
    broken.facts[0].mention = "a purple submarine"
    broken.relations[0].object_id = "nope"
    broken.views[0].regions[0].bbox = [0, 0, 999, 10]
    broken.description = "Too short."
    problems = " | ".join(validate_place(broken))
    for needle in ("purple submarine", "unknown element nope", "exceeds", "words"):
        assert needle in problems
    with pytest.raises(ValidationError):
        Region(bbox=[10, 10, 5, 20], phrase="x", element_id="b1")
    write_annotations(tmp_path / "rt.jsonl", [place])
    assert read_annotations(tmp_path / "rt.jsonl") == [place]


def test_refuses_bad_arguments_and_foreign_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_city(tmp_path, "New_York", 2, progress=False)
    with pytest.raises(ValueError):
        generate_city(tmp_path, CITY, 2, difficulty=1.5, progress=False)
    foreign = tmp_path / "Images" / CITY
    foreign.mkdir(parents=True)
    (foreign / "real_photo.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError):
        generate_city(tmp_path, CITY, 2, progress=False)
