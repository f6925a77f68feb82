"""Evidence in the map: what annotators derived from each image, stored beside the images.

The robot's knowledge of its map comes from the map's images, never from a data set's
ground truth: an annotator (a learned model, zero-shot phrase scoring, a teacher VLM, OCR)
turns each image into `EvidenceItem`s, and questioners and answer updates read them back per
place. Several annotators can annotate one map; each is kept apart by name, and each image
records the version of the annotator that did it, so a changed model re-annotates.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dlgpr_core.mapdb.store import MapStore, utc_now

Box = tuple[int, int, int, int]

UNSEEN_KEY = "evidence.unseen_rates"
"""Map setting: the map's own coverage rates (`EvidenceStore.unseen_rates`)."""


def check_unseen_rates(rates: Mapping[str, Any]) -> dict[str, float]:
    """Coverage rates as the map stores them: category -> P(a place has it | none of its
    views shows it), each a number in [0, 1). Raises ValueError naming the first bad entry
    (a rate of 1 would say a thing is at every place where no view shows it)."""
    if not isinstance(rates, Mapping):
        raise ValueError(
            f"unseen rates must map category names to numbers, got {type(rates).__name__}"
        )
    out: dict[str, float] = {}
    for category, rate in rates.items():
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"unseen rates: {category!r} is not a category name")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or math.isnan(rate):
            raise ValueError(f"unseen rates: {category!r} has {rate!r}, not a number in [0, 1)")
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"unseen rates: {category!r} has {rate}, outside [0, 1)")
        out[category] = float(rate)
    return out


PRESENCE = "category"
"""The attribute of an evidence item that says "this category of thing is visible" (the
store's own semantics; `dlgpr_core.evidence.slots` re-exports it)."""


@dataclass(frozen=True)
class EvidenceItem:
    """One thing an annotator saw in one image.

    `phrase` is always set ("a red brick bank"); `category`/`attribute`/`value` are the
    structured slot where the annotator knows it (attribute ``"category"`` says the thing
    itself is visible; see `dlgpr_core.evidence.slots`). `confidence`, in [0, 1]: for a
    presence item or an item without a slot, the probability that it holds for the image;
    for an attribute item, P(attribute = value | the category is visible), so that "is it
    there" and "what does it look like" stay separate; for the street, P(value).
    """

    phrase: str
    confidence: float
    category: str = ""
    attribute: str = ""
    value: str = ""
    bbox: Box | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence} ({self})")
        if not self.phrase.strip():
            raise ValueError("an evidence item needs a phrase")


@dataclass
class ImageEvidence:
    """One annotated image of a place and what was seen in it."""

    image_id: int
    path: str
    """Relative to the image's data set root, as search hits carry it."""
    items: list[EvidenceItem] = field(default_factory=list)

    def presence(self) -> dict[str, float]:
        """category -> the confidence of its presence item (`PRESENCE`) in this image."""
        return {it.category: it.confidence for it in self.items if it.attribute == PRESENCE}


@dataclass(frozen=True)
class AnnotatorRun:
    """How far one annotator got on a map, and what its evidence holds."""

    annotator: str
    versions: dict[str, int]
    """annotator version -> images done with it."""
    items: int
    types: dict[str, tuple[int, float]] = field(default_factory=dict)
    """evidence type (the slot's attribute, "category" = presence, "phrase" without a slot)
    -> (items, mean confidence)."""

    @property
    def images(self) -> int:
        return sum(self.versions.values())

    def render(self) -> str:
        versions = ", ".join(f"{v}: {n} images" for v, n in sorted(self.versions.items()))
        head = f"evidence:   {self.annotator} ({versions}): {self.items} items"
        kinds = ", ".join(
            f"{kind} {n} (mean conf {conf:.2f})" for kind, (n, conf) in sorted(self.types.items())
        )
        return head + (f"\n  {kinds}" if kinds else "")


class EvidenceStore:
    """The evidence tables of one map (callers hold the map's lock around writes)."""

    def __init__(self, store: MapStore) -> None:
        self._store = store

    def _q(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._store.execute(sql, args)

    # -- writing ------------------------------------------------------------------------
    def put(
        self, annotator: str, version: str, results: Iterable[tuple[int, Sequence[EvidenceItem]]]
    ) -> int:
        """Stores each image's items (replacing what this annotator stored for it) and marks
        it done at `version`, in the current transaction; returns the items written."""
        n = 0
        now = utc_now()
        for image_id, items in results:
            self._store.execute(
                "DELETE FROM evidence WHERE annotator = ? AND image_id = ?", (annotator, image_id)
            )
            rows = [
                (
                    image_id,
                    annotator,
                    it.phrase,
                    float(it.confidence),
                    it.category,
                    it.attribute,
                    it.value,
                    *(it.bbox if it.bbox is not None else (None, None, None, None)),
                )
                for it in items
            ]
            self._store.executemany(
                "INSERT INTO evidence (image_id, annotator, phrase, confidence, category, "
                "attribute, value, x0, y0, x1, y1) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._store.execute(
                "INSERT OR REPLACE INTO evidence_runs (image_id, annotator, version, time) "
                "VALUES (?, ?, ?, ?)",
                (image_id, annotator, version, now),
            )
            n += len(rows)
        self._bump()
        return n

    def _bump(self) -> None:
        """A new evidence generation: what was derived from the evidence (a lexical index)
        is stale."""
        self._store.set_meta("evidence_generation", str(self.generation() + 1))

    def generation(self) -> int:
        return int(self._store.get_meta("evidence_generation") or 0)

    def delete(self, annotator: str) -> None:
        """Forget everything `annotator` stored (in the current transaction)."""
        self._store.execute("DELETE FROM evidence WHERE annotator = ?", (annotator,))
        self._store.execute("DELETE FROM evidence_runs WHERE annotator = ?", (annotator,))
        self._bump()

    def set_unseen_rates(self, rates: Mapping[str, float] | None) -> None:
        """Record the map's coverage rates (checked; {}: its views show everything there
        is) or forget them (None: the shipped rates), in the current transaction. Bad
        rates raise (`check_unseen_rates`) before anything recorded is touched."""
        checked = check_unseen_rates(rates) if rates is not None else None
        self._store.delete_meta(UNSEEN_KEY)
        if checked is not None:
            self._store.set_meta(UNSEEN_KEY, json.dumps(checked))

    # -- reading ------------------------------------------------------------------------
    def unseen_rates(self) -> dict[str, float] | None:
        """The map's own coverage rates, category -> P(a place has the thing | none of its
        views shows it), for the answer model (`AnswerModel.for_evidence`); None when the
        map records none, and the shipped rates, measured on SynthCities' four views per
        place, apply. A map captured otherwise (a 360-degree camera: {}) records its own
        with `dlgpr map coverage`."""
        raw = self._store.get_meta(UNSEEN_KEY)
        return check_unseen_rates(json.loads(raw)) if raw else None

    def todo(self, annotator: str, version: str) -> list[int]:
        """Ids of images `annotator` has not done at `version` (new images, a new model)."""
        rows = self._q(
            "SELECT i.id FROM images i LEFT JOIN evidence_runs r ON r.image_id = i.id "
            "AND r.annotator = ? WHERE r.version IS NULL OR r.version != ? ORDER BY i.id",
            (annotator, version),
        )
        return [int(r[0]) for r in rows]

    def runs(self) -> list[AnnotatorRun]:
        """Every annotator that annotated this map, with its versions and item count."""
        versions: dict[str, dict[str, int]] = defaultdict(dict)
        for name, version, n in self._q(
            "SELECT annotator, version, COUNT(*) FROM evidence_runs GROUP BY annotator, version"
        ):
            versions[str(name)][str(version)] = int(n)
        types: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
        for name, attr, n, conf in self._q(
            "SELECT annotator, attribute, COUNT(*), AVG(confidence) FROM evidence "
            "GROUP BY annotator, attribute"
        ):
            types[str(name)][str(attr) or "phrase"] = (int(n), float(conf))
        return [
            AnnotatorRun(a, v, sum(n for n, _ in types[a].values()), dict(types[a]))
            for a, v in sorted(versions.items())
        ]

    def for_places(
        self, annotator: str, place_ids: Sequence[str]
    ) -> dict[str, list[ImageEvidence]]:
        """place id -> its images `annotator` has done, each with its items (an image done
        with no item saw nothing: evidence of absence). Places not done are absent."""
        out: dict[str, dict[int, ImageEvidence]] = {}
        for start in range(0, len(place_ids), 500):  # SQLite's variable limit
            chunk = list(place_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self._q(
                "SELECT i.place_id, i.id, i.path, e.phrase, e.confidence, e.category, "
                "e.attribute, e.value, e.x0, e.y0, e.x1, e.y1 FROM evidence_runs r "
                "JOIN images i ON i.id = r.image_id LEFT JOIN evidence e "
                "ON e.image_id = r.image_id AND e.annotator = r.annotator "
                f"WHERE r.annotator = ? AND i.place_id IN ({marks}) ORDER BY i.id, e.id",
                (annotator, *chunk),
            ):
                place, image_id, path, phrase, conf, cat, attr, value, x0, y0, x1, y1 = row
                images = out.setdefault(str(place), {})
                image = images.setdefault(int(image_id), ImageEvidence(int(image_id), str(path)))
                if phrase is None:
                    continue
                box = (int(x0), int(y0), int(x1), int(y1)) if x0 is not None else None
                image.items.append(
                    EvidenceItem(str(phrase), float(conf), str(cat), str(attr), str(value), box)
                )
        return {place: list(images.values()) for place, images in out.items()}
