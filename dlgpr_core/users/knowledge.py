"""What one place's annotation settles about a structured question, and the truthful answer.

The simulated user's knowledge: it answers from the place's ground-truth facts. The robot
never sees it; it predicts answers from image evidence (`dlgpr_core.dialogue.answer_model`)
in the same outcome classes (`dlgpr_core.dialogue.answers.Outcome`).

Closed-world rule: SynthCities lists every static element of a place, so a category with no
element is truly absent ("No, there is no fountain."). Attribute values are taken only from
the annotation's facts (what the description states), never guessed; a question the facts
do not settle is answered "I don't know."
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.answers import DONT_KNOW, Outcome
from dlgpr_core.dialogue.questions import (
    STREET,
    Question,
    presence_statement,
    statement,
)


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


def _prefix(word: str, sentence: str, use: bool) -> str:
    if not use:
        return sentence
    # "The bank ..." -> "Yes, the bank ..."; keep capitals of names like "There".
    first, rest = sentence[:1], sentence[1:]
    return f"{word}, {first.lower()}{rest}"


__all__ = ["DONT_KNOW", "STREET", "Outcome", "PlaceKnowledge"]
