"""What one place's annotation settles about a structured question, and the truthful answer.

The simulated user and the information-gain questioner both call `PlaceKnowledge.outcome`,
so the questioner's model of "how would this candidate answer?" is exactly the user's
behaviour: the expected information gain is computed over the answers the user really gives.

Closed-world rule: SynthCities lists every static element of a place, so a category with no
element is truly absent ("No, there is no fountain."). Attribute values are taken only from
the annotation's facts (what the description states), never guessed; a question the facts
do not settle is answered "I don't know."
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.questions import (
    STREET,
    Question,
    presence_statement,
    statement,
)

DONT_KNOW = "I don't know."

Outcome = tuple[str, ...]
"""A hashable answer class: ("yes",), ("no", values...), ("absent",), ("unknown",),
("value", values...), ("present",). Two places with equal outcomes are indistinguishable
by the question."""


@dataclass(frozen=True)
class PlaceKnowledge:
    """Index of one place's facts by category, built once per place."""

    categories: dict[str, int]
    """Category -> number of elements of that category."""
    values: dict[tuple[str, str], tuple[str, ...]]
    """(category, attribute) -> sorted distinct stated values."""
    complete: dict[tuple[str, str], bool]
    """(category, attribute) -> whether every element of the category has a stated value."""

    @classmethod
    def from_place(cls, place: PlaceAnnotation) -> PlaceKnowledge:
        """Index `place`; facts about unknown element ids are ignored (validation reports them)."""
        category_of = {e.id: e.category for e in place.elements}
        counts: dict[str, int] = defaultdict(int)
        for e in place.elements:
            counts[e.category] += 1
        per_element: dict[tuple[str, str], set[str]] = defaultdict(set)
        values: dict[tuple[str, str], set[str]] = defaultdict(set)
        for f in place.facts:
            cat = category_of.get(f.element_id)
            if cat is None or f.attribute == "category":
                continue
            values[(cat, f.attribute)].add(f.value)
            per_element[(cat, f.attribute)].add(f.element_id)
        return cls(
            categories=dict(counts),
            values={k: tuple(sorted(v)) for k, v in values.items()},
            complete={k: len(per_element[k]) == counts[k[0]] for k in values},
        )

    def outcome(self, q: Question) -> Outcome:
        """The answer class this place gives to `q` (see `Outcome`)."""
        if q.kind == "presence":
            return ("present",) if q.category in self.categories else ("absent",)
        if q.category not in self.categories:
            return ("absent",)
        attr = q.attribute or ""
        vals = self.values.get((q.category, attr), ())
        if q.value is None:
            return ("value", *vals) if vals else ("unknown",)
        if q.value in vals:
            return ("yes",)
        if vals and self.complete.get((q.category, attr), False):
            return ("no", *vals)
        return ("unknown",)

    def answer(self, q: Question, yes_no_prefix: bool = True) -> str:
        """Short truthful sentence(s) answering `q`; "I don't know." when unsettled.

        A "no" states the real value ("No, the pharmacy has red awnings."), which is both
        what a person would say and more useful retrieval text. `yes_no_prefix=False` drops
        the leading "Yes,"/"No," (for free-text questions whose polarity was not parsed,
        e.g. negated ones, where a bare "Yes" could be read as agreeing with a falsehood).
        """
        out = self.outcome(q)
        tag = out[0]
        if tag == "unknown":
            return DONT_KNOW
        if tag == "present":
            return _prefix("Yes", presence_statement(q.category, True), yes_no_prefix)
        if tag == "absent":
            return _prefix("No", presence_statement(q.category, False), yes_no_prefix)
        attr = q.attribute or ""
        if tag == "yes":
            return _prefix("Yes", statement(q.category, attr, q.value or ""), yes_no_prefix)
        sentences = " ".join(statement(q.category, attr, v) for v in out[1:])
        if tag == "no":
            return _prefix("No", sentences, yes_no_prefix)
        return sentences


class KnowledgeIndex:
    """Each annotated place indexed once, on first use; un-annotated places know nothing.

    Questioners and re-rankers look at the same few hundred candidates every round, so
    the index is built lazily and kept."""

    def __init__(self, places_by_id: Mapping[str, PlaceAnnotation]) -> None:
        self.places = places_by_id
        self._cache: dict[str, PlaceKnowledge] = {}

    def get(self, place_id: str) -> PlaceKnowledge | None:
        """The place's knowledge, or None when the map has no annotation for it."""
        if place_id not in self._cache:
            place = self.places.get(place_id)
            if place is None:
                return None
            self._cache[place_id] = PlaceKnowledge.from_place(place)
        return self._cache[place_id]


def _prefix(word: str, sentence: str, use: bool) -> str:
    if not use:
        return sentence
    # "The bank ..." -> "Yes, the bank ..."; keep capitals of names like "There".
    first, rest = sentence[:1], sentence[1:]
    return f"{word}, {first.lower()}{rest}"


__all__ = ["DONT_KNOW", "STREET", "KnowledgeIndex", "Outcome", "PlaceKnowledge"]
