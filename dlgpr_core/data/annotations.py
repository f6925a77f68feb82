"""The DQ-Cities annotation layers of one place, as validated pydantic models.

The same schema carries the procedural SynthCities data and, later, real DQ-Cities
annotations, so it names only what the paper's layers need (ambiguous caption,
fine-grained description, region boxes with phrases) plus the structured facts and
relations a simulated user answers from. Everything is checked on load, because a
broken box or a fact the description never states silently poisons training and the
dialogue simulator.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dlgpr_core.data.paths import ESCAPES_ROOT, resolve_inside
from dlgpr_core.data.records import namespaced_place_id

SCHEMA_VERSION = "1.0"
"""Bumped whenever a field changes meaning or a required field is added."""

DESCRIPTION_MIN_WORDS = 100
DESCRIPTION_MAX_WORDS = 260
"""DQ-Cities descriptions average 155 words, max 262; outside this window a description is
either too thin to answer follow-up questions or too long for a stretched CLIP text tower."""

RelationKind = Literal["left_of", "right_of", "next_to", "across_from"]


def _check_bbox(box: list[int]) -> list[int]:
    """Degenerate or inverted boxes crash detectors' losses and crop code far from here."""
    if len(box) != 4:
        raise ValueError(f"bbox needs 4 ints [x0, y0, x1, y1], got {len(box)}")
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0:
        raise ValueError(f"bbox {box} has a negative coordinate")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {box} is empty or inverted (needs x0 < x1 and y0 < y1)")
    return box


BBox = Annotated[list[int], AfterValidator(_check_bbox)]


def _check_image_path(path: str) -> str:
    """A view's image must name a file inside the data set: annotation files come from
    converters and the internet, so an absolute path or ``..`` would make a trainer or
    the evidence model read any file on the machine. Checked on load, by the text alone
    (what it resolves to is `view_image_path`'s job)."""
    if not path or "\x00" in path:
        raise ValueError("image path is empty or holds a NUL byte")
    win = PureWindowsPath(path)
    if PurePosixPath(path).is_absolute() or win.is_absolute() or win.drive or win.root:
        raise ValueError(
            f"image path {path[:200]!r} is absolute; use a path relative to the data set root"
        )
    if ".." in win.parts:  # PureWindowsPath splits on both "/" and "\\"
        raise ValueError(
            f"image path {path[:200]!r} climbs out with '..'; use a path inside the data set root"
        )
    return path


ImagePath = Annotated[str, AfterValidator(_check_image_path)]
"""Relative POSIX path inside the data set root, never absolute, never through ``..``."""
"""Pixel box ``[x0, y0, x1, y1]``, half-open: ``x1``/``y1`` may equal the image size."""


class _Model(BaseModel):
    # Unknown keys are refused so that a typo in a hand-edited or converted file is an
    # error instead of a silently missing field.
    model_config = ConfigDict(extra="forbid")


class Fact(_Model):
    """One atomic, checkable statement about an element, anchored in the description."""

    element_id: str
    attribute: str
    value: str
    mention: str = Field(min_length=1)
    """The exact phrase of the description that states this fact."""


class Element(_Model):
    """A static, describable thing of the place (never a car or a pedestrian)."""

    id: str = Field(min_length=1)
    kind: str
    """Coarse class: building, furniture, vegetation, marking, street."""
    category: str
    """Fine class: bank, phone booth, tree, ..."""
    attributes: dict[str, str] = Field(default_factory=dict)
    slot: int | None = None
    """Left-to-right order along the street among the elements of the same side."""
    side: str | None = None
    """``far`` (the facade side), ``near`` (the camera's pavement), ``road`` or ``street``."""


class Region(_Model):
    """A box in one view paired with the descriptive phrase that grounds it."""

    bbox: BBox
    phrase: str
    element_id: str


class Transient(_Model):
    """An occluder (car, pedestrian) that is drawn but never described."""

    kind: str
    bbox: BBox


class ViewAnnotation(_Model):
    """One image of the place and its region-level evidence."""

    image: ImagePath
    """Path relative to the data set root, POSIX separators (``Images/<City>/...jpg``)."""
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    heading: float
    regions: list[Region] = Field(default_factory=list)
    transients: list[Transient] = Field(default_factory=list)
    conditions: dict[str, str] = Field(default_factory=dict)
    """Capture conditions such as ``time_of_day`` and ``season``; not facts of the place."""


class Relation(_Model):
    """A spatial relation between two elements, as the description phrases it."""

    subject_id: str
    relation: RelationKind
    object_id: str
    mention: str = Field(min_length=1)


class PlaceAnnotation(_Model):
    """All annotation layers of one place (one line of an annotations JSONL file)."""

    schema_version: str = SCHEMA_VERSION
    city: str
    place_id: int = Field(ge=0)
    caption: str
    """The initial, deliberately ambiguous caption (one sentence)."""
    description: str
    """The fine-grained description; static elements only."""
    elements: list[Element] = Field(default_factory=list)
    facts: list[Fact] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    views: list[ViewAnnotation] = Field(default_factory=list)
    meta: dict[str, str | int | float] = Field(default_factory=dict)
    """Producer-specific extras (e.g. the SynthCities archetype); consumers must not need it."""


def word_count(text: str) -> int:
    """Whitespace word count, the measure the description length limits are stated in."""
    return len(text.split())


def validate_place(p: PlaceAnnotation) -> list[str]:
    """Cross-field problems pydantic cannot see field by field; empty when the place is sound.

    Returned rather than raised so a converter can report every bad place at once.
    """
    problems: list[str] = []
    ids = [e.id for e in p.elements]
    known = set(ids)
    if len(known) != len(ids):
        problems.append("duplicate element ids")
    n_words = word_count(p.description)
    if not DESCRIPTION_MIN_WORDS <= n_words <= DESCRIPTION_MAX_WORDS:
        problems.append(
            f"description has {n_words} words, outside "
            f"{DESCRIPTION_MIN_WORDS}..{DESCRIPTION_MAX_WORDS}"
        )
    for f in p.facts:
        if f.element_id not in known:
            problems.append(
                f"fact {f.attribute}={f.value!r} refers to unknown element {f.element_id}"
            )
        if f.mention not in p.description:
            problems.append(f"fact mention {f.mention!r} is not in the description")
    for r in p.relations:
        for eid in (r.subject_id, r.object_id):
            if eid not in known:
                problems.append(f"relation {r.relation} refers to unknown element {eid}")
        if r.mention not in p.description:
            problems.append(f"relation mention {r.mention!r} is not in the description")
    for v in p.views:
        boxes = [(f"region {r.element_id}", r.bbox) for r in v.regions]
        boxes += [(f"transient {t.kind}", t.bbox) for t in v.transients]
        for what, (_x0, _y0, x1, y1) in boxes:
            if x1 > v.width or y1 > v.height:
                problems.append(f"{v.image}: {what} box exceeds the {v.width}x{v.height} image")
        for region in v.regions:
            if region.element_id not in known:
                problems.append(f"{v.image}: region refers to unknown element {region.element_id}")
    return problems


def read_annotations(path: Path | str) -> list[PlaceAnnotation]:
    """Load a JSONL file (one place per line, blank lines ignored).

    Fails on the first bad line, naming file and line, because annotation files are
    produced by tools and a bad line means the producer is broken, not that one item is.
    """
    path = Path(path)
    places: list[PlaceAnnotation] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                places.append(PlaceAnnotation.model_validate_json(line))
            except ValidationError as err:
                raise ValueError(f"{path}:{lineno}: invalid place annotation: {err}") from err
    return places


def write_annotations(path: Path | str, places: Iterable[PlaceAnnotation]) -> None:
    """Write one compact JSON object per line; output is byte-stable for equal input."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for p in places:
            fh.write(p.model_dump_json())
            fh.write("\n")


def view_image_path(root: Path | str, view: ViewAnnotation) -> Path:
    """``root / view.image`` once `resolve_inside` agrees it stays in the data set (a
    symlink is judged by where it ends); ValueError naming the path otherwise. Every reader
    that opens annotation images goes through here, as the map builder's readers do."""
    root = Path(root)
    if resolve_inside(root, view.image) is None:
        raise ValueError(f"annotation image {view.image[:200]!r}: {ESCAPES_ROOT} {root}")
    return root / view.image


def places_by_id(places: Iterable[PlaceAnnotation]) -> dict[str, PlaceAnnotation]:
    """Places keyed by their namespaced id ("City:id"), the id maps store and rank."""
    return {namespaced_place_id(p.city, p.place_id): p for p in places}
