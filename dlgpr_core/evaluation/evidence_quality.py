"""How right an annotator's evidence is: precision and recall per evidence type, against the
data set's ground-truth annotations, at image level and at place level.

Evidence types: category presence; each building attribute over every building category
(name = what the sign reads, colour, material, floors, awning, roof, door); each furniture,
vegetation and marking attribute per category ("bench material"); the street's width and
pavement. Rules:

- presence: predicted = an item with attribute ``"category"`` and confidence >= 0.5;
  ground truth = the categories with a region in that image (image level) or in any of the
  place's views (place level, where the prediction is `PlaceEvidence`'s max over views);
- attributes: every ground-truth element visible (with a region) in the image (place: in any
  view) and each of its attributes in the slot vocabulary is one ground-truth fact (the
  recall denominator). If the element's category is predicted present and the annotator gave
  that attribute a distribution, the fact is predicted (precision denominator) with the
  argmax value; correct when it equals the element's value. Two visible elements of one
  category (two trees) share the category's one distribution, as the evidence does;
- the street: present in every image; its facts are predicted when the annotator gave them.

The place level uses `PlaceEvidence.from_images`, the aggregation the questioners read.
A third table splits the place-level recall of building kinds by how the building's best
view shows it (`building_views`): a sign outside the frame or behind a tree in every view is
a kind no image tells, which the oracle evidence knows anyway.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlgpr_core.data.annotations import Element, PlaceAnnotation
from dlgpr_core.evaluation.building_views import VIEW_CLASSES, building_view_class
from dlgpr_core.evidence import slots as slot_defs
from dlgpr_core.evidence.knowledge import PlaceEvidence
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.evidence import ImageEvidence

PRESENCE_TYPE = "presence"
LEVELS = ("image", "place")


def evidence_type(category: str, attribute: str) -> str:
    """The row an evidence fact counts in."""
    if attribute == slot_defs.PRESENCE:
        return PRESENCE_TYPE
    if category == slot_defs.STREET:
        return f"street {attribute}"
    slot = slot_defs.slots().get(category)
    if slot is not None and slot.kind == "building":
        return "building name (sign)" if attribute == "name" else f"building {attribute}"
    return f"{category} {attribute}"


def evidence_types() -> list[str]:
    """Every row, in table order: presence, buildings, other categories, the street."""
    out = [PRESENCE_TYPE]
    for cat, slot in slot_defs.slots().items():
        for attr in slot.attributes:
            t = evidence_type(cat, attr)
            if t not in out:
                out.append(t)
    street = [t for t in out if t.startswith("street ")]
    return [t for t in out if t not in street] + street


@dataclass
class Counts:
    ground_truth: int = 0
    predicted: int = 0
    correct: int = 0

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.ground_truth if self.ground_truth else None


@dataclass
class QualityRow:
    evidence: str
    level: str
    ground_truth: int
    predicted: int
    correct: int
    precision: float | None
    recall: float | None


@dataclass
class EvidenceQualityTable:
    rows: list[QualityRow] = field(default_factory=list)
    presence_by_category: list[QualityRow] = field(default_factory=list)
    buildings_by_view: list[QualityRow] = field(default_factory=list)
    """Place level, one row per `building_views.VIEW_CLASSES` entry: the visible buildings
    whose best view is of that class (ground_truth) and those whose kind the place's
    evidence has at the threshold (correct); precision is not defined per class."""
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, evidence: str, level: str) -> QualityRow | None:
        for r in [*self.rows, *self.presence_by_category]:
            if r.evidence == evidence and r.level == level:
                return r
        return None

    @staticmethod
    def _pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def _render(self, rows: Sequence[QualityRow], first: str) -> list[str]:
        head = [first, "image P", "image R", "image facts", "place P", "place R", "place facts"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        by = {(r.evidence, r.level): r for r in rows}
        for name in dict.fromkeys(r.evidence for r in rows):
            cells = [name]
            for level in LEVELS:
                r = by.get((name, level))
                cells += (
                    [self._pct(r.precision), self._pct(r.recall), str(r.ground_truth)]
                    if r
                    else ["-", "-", "0"]
                )
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def to_markdown(self) -> str:
        """Precision and recall in percent; "facts" = ground-truth facts counted. A
        ``command`` in `meta` is written above the tables (how to reproduce them)."""
        lines: list[str] = []
        if self.meta.get("command"):
            lines += [f"Produced by `{self.meta['command']}`", ""]
        lines += self._render(self.rows, "evidence")
        if self.presence_by_category:
            lines += ["", *self._render(self.presence_by_category, "presence of")]
        if self.buildings_by_view:
            lines += [
                "",
                "| building's best view | buildings | kind found (place R) |",
                "|---|---|---|",
                *(
                    f"| {r.evidence} | {r.ground_truth} | {self._pct(r.recall)} |"
                    for r in self.buildings_by_view
                ),
            ]
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """``<out>.md`` (percent) and ``<out>.json`` (fractions and counts, plus `meta`), as
        the static retrieval tables are written."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        md, js = out.with_name(out.name + ".md"), out.with_name(out.name + ".json")
        md.write_text(self.to_markdown(), encoding="utf-8")
        payload = {
            "meta": self.meta,
            "rows": [asdict(r) for r in self.rows],
            "presence_by_category": [asdict(r) for r in self.presence_by_category],
            "buildings_by_view": [asdict(r) for r in self.buildings_by_view],
        }
        js.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return md, js


def _gt_facts(element: Element) -> dict[str, str]:
    """The element's attributes the robot's ontology can express (evidence is what is
    visible: e.g. a street's building count is no slot)."""
    return {
        a: v
        for a, v in element.attributes.items()
        if a != slot_defs.PRESENCE and v in slot_defs.values(element.category, a)
    }


def _argmax(dist: Mapping[str, float]) -> str | None:
    return max(dist.items(), key=lambda kv: (kv[1], kv[0]))[0] if dist else None


class _Tally:
    def __init__(self) -> None:
        self.types: dict[str, Counts] = {}
        self.presence: dict[str, Counts] = {}

    def _c(self, table: dict[str, Counts], key: str) -> Counts:
        return table.setdefault(key, Counts())

    def score(
        self,
        gt_elements: Sequence[Element],
        presence: Mapping[str, float],
        dists: Mapping[tuple[str, str], Mapping[str, float]],
        threshold: float,
    ) -> None:
        """One image (or one place): its visible elements vs its evidence."""
        known = slot_defs.slots()
        gt_cats = {e.category for e in gt_elements if e.category in known}
        gt_cats.discard(slot_defs.STREET)
        pred_cats = {c for c, p in presence.items() if p >= threshold and c != slot_defs.STREET}
        total = self._c(self.types, PRESENCE_TYPE)
        for cat in gt_cats | pred_cats:
            per = self._c(self.presence, cat)
            hit = cat in gt_cats and cat in pred_cats
            for c in (total, per):
                c.ground_truth += cat in gt_cats
                c.predicted += cat in pred_cats
                c.correct += hit
        for el in gt_elements:
            if el.category not in known:
                continue
            street = el.category == slot_defs.STREET
            for attr, value in _gt_facts(el).items():
                c = self._c(self.types, evidence_type(el.category, attr))
                c.ground_truth += 1
                if not street and el.category not in pred_cats:
                    continue
                guess = _argmax(dists.get((el.category, attr), {}))
                if guess is None:
                    continue
                c.predicted += 1
                c.correct += guess == value

    def rows(self, level: str) -> tuple[list[QualityRow], list[QualityRow]]:
        order = evidence_types()
        rows = [
            QualityRow(t, level, c.ground_truth, c.predicted, c.correct, c.precision, c.recall)
            for t in order
            if (c := self.types.get(t)) is not None
        ]
        pres = [
            QualityRow(cat, level, c.ground_truth, c.predicted, c.correct, c.precision, c.recall)
            for cat in slot_defs.categories()
            if (c := self.presence.get(cat)) is not None
        ]
        return rows, pres


def _image_reading(
    image: ImageEvidence,
) -> tuple[dict[str, float], dict[tuple[str, str], dict[str, float]]]:
    presence: dict[str, float] = {}
    dists: dict[tuple[str, str], dict[str, float]] = {}
    for it in image.items:
        if not it.category or not it.attribute:
            continue
        if it.attribute == slot_defs.PRESENCE:
            presence[it.category] = max(presence.get(it.category, 0.0), it.confidence)
        else:
            dists.setdefault((it.category, it.attribute), {})[it.value] = it.confidence
    return presence, dists


def evidence_quality(
    evidence: Mapping[str, Sequence[ImageEvidence]],
    annotations: Mapping[str, PlaceAnnotation],
    *,
    threshold: float = 0.5,
    meta: Mapping[str, Any] | None = None,
) -> EvidenceQualityTable:
    """Score `evidence` (namespaced place id -> its annotated images, as
    `EvidenceStore.for_places` returns) against `annotations` (namespaced place id -> place).

    Images are matched to views by their path relative to the data set root; a place or an
    image without evidence is left out (and counted in ``meta``), so an annotator that
    covered part of a map is scored on that part.
    """
    image_tally, place_tally = _Tally(), _Tally()
    by_view = {c: Counts() for c in VIEW_CLASSES}
    places = images = unmatched = 0
    for place_id, place in annotations.items():
        done = evidence.get(place_id)
        if not done:
            continue
        by_path = {im.path: im for im in done}
        elements = {e.id: e for e in place.elements}
        street = [e for e in place.elements if e.category == slot_defs.STREET]
        seen_ids: set[str] = set()
        matched: list[ImageEvidence] = []
        for view in place.views:
            image = by_path.get(view.image)
            if image is None:
                continue
            ids = list(dict.fromkeys(r.element_id for r in view.regions))
            visible = [elements[i] for i in ids if i in elements] + street
            presence, dists = _image_reading(image)
            image_tally.score(visible, presence, dists, threshold)
            seen_ids.update(ids)
            matched.append(image)
        unmatched += len(done) - len(matched)
        if not matched:
            continue
        places += 1
        images += len(matched)
        pe = PlaceEvidence.from_images(matched)
        visible = [elements[i] for i in dict.fromkeys(seen_ids) if i in elements] + street
        place_tally.score(visible, pe.presence, pe.values, threshold)
        for el in visible:
            seen = building_view_class(place, el) if el.kind == "building" else None
            if seen is not None:
                by_view[seen].ground_truth += 1
                by_view[seen].correct += pe.presence.get(el.category, 0.0) >= threshold
    table = EvidenceQualityTable(
        meta={
            "threshold": threshold,
            "places": places,
            "images": images,
            "images_without_view": unmatched,
            "places_without_evidence": sum(1 for p in annotations if not evidence.get(p)),
            **dict(meta or {}),
        }
    )
    for tally, level in ((image_tally, "image"), (place_tally, "place")):
        rows, pres = tally.rows(level)
        table.rows += rows
        table.presence_by_category += pres
    table.buildings_by_view = [
        QualityRow(name, "place", c.ground_truth, 0, c.correct, None, c.recall)
        for name, c in by_view.items()
        if c.ground_truth
    ]
    return table


def map_evidence_quality(
    db: MapDatabase,
    annotator: str,
    annotations: Mapping[str, PlaceAnnotation],
    *,
    threshold: float = 0.5,
    meta: Mapping[str, Any] | None = None,
) -> EvidenceQualityTable:
    """`evidence_quality` of what `annotator` stored in a map (``db.evidence``), for the
    annotated places (`mapdb.ground_truth.map_annotations` reads them for a map)."""
    evidence = db.evidence.for_places(annotator, sorted(annotations))
    versions = {r.annotator: r.versions for r in db.evidence.runs()}
    info = {"annotator": annotator, "versions": versions.get(annotator, {}), **dict(meta or {})}
    return evidence_quality(evidence, annotations, threshold=threshold, meta=info)
