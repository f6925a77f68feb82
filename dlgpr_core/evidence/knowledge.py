"""A place's evidence as probabilities: what is there, and what each thing looks like.

The map stores per-image evidence; questioners and the answer update need per-place beliefs.
Aggregation rule (one for every annotator and for the evidence-quality evaluation):

- presence: P(category visible at the place) = the largest of its images' presence
  confidences (an element out of frame in one view is in another; noisy-or would count one
  element seen in four views as four sightings);
- attributes: P(value | category) = the presence-weighted mean of the images' conditional
  value distributions, so a view in which the thing is barely detected says little about it;
- the street: the mean over images of its attribute distributions.

Attribute items carry P(value | the category is visible) (see `EvidenceItem`); presence items
P(visible). Items without a slot are kept as phrases only (for prompts and summaries).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dlgpr_core.evidence.slots import PRESENCE, STREET
from dlgpr_core.mapdb.evidence import EvidenceItem, EvidenceStore, ImageEvidence


@dataclass(frozen=True)
class PlaceEvidence:
    """Everything the robot believes about one place, from its images."""

    presence: dict[str, float]
    """category -> P(visible at the place)."""
    values: dict[tuple[str, str], dict[str, float]]
    """(category, attribute) -> value -> P(value | category visible); may sum below 1 when
    an annotator reports only its likeliest values."""
    phrases: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    """image path -> (phrase, confidence), most confident first: for VLM prompts."""
    images: int = 0

    @classmethod
    def from_images(cls, images: Sequence[ImageEvidence]) -> PlaceEvidence:
        presence: dict[str, float] = defaultdict(float)
        weighted: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        weight: dict[tuple[str, str], float] = defaultdict(float)
        phrases: dict[str, list[tuple[str, float]]] = {}
        for image in images:
            seen = image.presence()
            for cat, p in seen.items():
                presence[cat] = max(presence[cat], p)
            per_attr: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
            for it in image.items:
                if it.category and it.attribute and it.attribute != PRESENCE:
                    per_attr[(it.category, it.attribute)][it.value] = it.confidence
            for key, dist in per_attr.items():
                w = 1.0 if key[0] == STREET else seen.get(key[0], 0.0)
                for value, q in dist.items():
                    weighted[key][value] += w * q
                weight[key] += w
            phrases[image.path] = sorted(
                ((it.phrase, it.confidence) for it in image.items), key=lambda t: -t[1]
            )
        values = {
            key: {v: q / weight[key] for v, q in dist.items()}
            for key, dist in weighted.items()
            if weight[key] > 0
        }
        return cls(dict(presence), values, phrases, len(images))

    def p(self, category: str) -> float:
        """P(category visible); the street is always there."""
        return 1.0 if category == STREET else self.presence.get(category, 0.0)

    def dist(self, category: str, attribute: str) -> dict[str, float]:
        return self.values.get((category, attribute), {})

    def top_phrases(self, limit: int, image_path: str | None = None) -> list[str]:
        """The most confident phrases of one image (or of the whole place)."""
        pool: Iterable[tuple[str, float]] = (
            self.phrases.get(image_path, [])
            if image_path is not None
            else (t for ps in self.phrases.values() for t in ps)
        )
        out: list[str] = []
        for phrase, _ in sorted(pool, key=lambda t: -t[1]):
            if phrase not in out:
                out.append(phrase)
            if len(out) >= limit:
                break
        return out


class EvidenceSource:
    """Place evidence by place id, read from a map lazily and kept (candidates recur)."""

    def __init__(
        self,
        load: Callable[[Sequence[str]], Mapping[str, Sequence[ImageEvidence]]],
        unseen: Mapping[str, float] | None = None,
    ) -> None:
        self._load = load
        self._cache: dict[str, PlaceEvidence | None] = {}
        self.unseen = unseen
        """The map's coverage rates (`EvidenceStore.unseen_rates`); None: the shipped ones.
        How much a place's views miss is a fact about the map, read with its evidence."""

    @classmethod
    def of_map(cls, store: EvidenceStore, annotator: str) -> EvidenceSource:
        """From a map's `EvidenceStore` (``db.evidence``) for one annotator, with the map's
        coverage rates."""
        return cls(lambda ids: store.for_places(annotator, ids), store.unseen_rates())

    def get_many(self, place_ids: Sequence[str]) -> list[PlaceEvidence | None]:
        missing = [p for p in dict.fromkeys(place_ids) if p not in self._cache]
        if missing:
            loaded = self._load(missing)
            for p in missing:
                images = loaded.get(p)
                self._cache[p] = PlaceEvidence.from_images(images) if images else None
        return [self._cache[p] for p in place_ids]

    def prefetch(self, place_ids: Sequence[str]) -> int:
        """Reads ahead (and keeps) the evidence of those of `place_ids` not read yet, so a
        later `get_many` finds it in memory; returns how many places were read."""
        missing = [p for p in dict.fromkeys(place_ids) if p not in self._cache]
        if missing:
            self.get_many(missing)
        return len(missing)

    def get(self, place_id: str) -> PlaceEvidence | None:
        """The place's evidence, or None when the annotator left it none."""
        return self.get_many([place_id])[0]


def items_summary(items: Iterable[EvidenceItem]) -> dict[str, int]:
    """Counts of items by evidence type (attribute, or "phrase" without a slot)."""
    out: dict[str, int] = defaultdict(int)
    for it in items:
        out[it.attribute or "phrase"] += 1
    return dict(out)
