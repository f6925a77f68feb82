"""The label space of the learned evidence heads, frozen into the shipped asset.

The heads predict indices; this maps them back to the robot's ontology
(`dlgpr_core.evidence.slots`). It is stored in the asset JSON rather than rebuilt from the
slots at load time, so a model keeps meaning what it was trained to mean if the ontology later
grows: the annotator then drops any value the current slots no longer know instead of
mislabelling it.

Class 0 of the category head is the background; category ``i`` of `categories` is class
``i + 1``. Each attribute head covers the union of that attribute's values over every
category (a building's "colour" and a bench's "colour" share one head); a category's own
values are a mask over that union (`allowed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dlgpr_core.evidence import slots as slot_defs

BACKGROUND = "background"


@dataclass(frozen=True)
class LabelVocab:
    categories: tuple[str, ...]
    """Visible categories, in head order (class index = position + 1)."""
    category_values: Mapping[str, Mapping[str, tuple[str, ...]]]
    """category -> attribute -> its values (the slots at training time)."""
    street: Mapping[str, tuple[str, ...]]
    """Street attribute -> values (image-level heads)."""

    @classmethod
    def from_slots(cls) -> LabelVocab:
        """The ontology of `dlgpr_core.evidence.slots` as it is now."""
        all_slots = slot_defs.slots()
        cats = tuple(slot_defs.categories())
        return cls(
            categories=cats,
            category_values={c: dict(all_slots[c].attributes) for c in cats},
            street=dict(all_slots[slot_defs.STREET].attributes),
        )

    @cached_property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """attribute -> the union of its values over every category, in first-seen order."""
        out: dict[str, list[str]] = {}
        for c in self.categories:
            for attr, vals in self.category_values[c].items():
                seen = out.setdefault(attr, [])
                seen.extend(v for v in vals if v not in seen)
        return {a: tuple(v) for a, v in out.items()}

    @property
    def n_classes(self) -> int:
        """Category-head classes, background included."""
        return len(self.categories) + 1

    def class_of(self, category: str) -> int:
        return self.categories.index(category) + 1

    def value_index(self, attribute: str, value: str) -> int:
        """Index of `value` in the attribute head; -1 when the head does not know it."""
        vals = self.attributes.get(attribute, ())
        return vals.index(value) if value in vals else -1

    @cached_property
    def allowed(self) -> dict[str, list[list[bool]]]:
        """attribute -> [class][value] mask: may this class's element take this value? The
        background row is all False; a category without the attribute has an all-False row."""
        out: dict[str, list[list[bool]]] = {}
        for attr, vals in self.attributes.items():
            rows = [[False] * len(vals)]
            for c in self.categories:
                own = set(self.category_values[c].get(attr, ()))
                rows.append([v in own for v in vals])
            out[attr] = rows
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "category_values": {
                c: {a: list(v) for a, v in attrs.items()}
                for c, attrs in self.category_values.items()
            },
            "street": {a: list(v) for a, v in self.street.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelVocab:
        return cls(
            categories=tuple(data["categories"]),
            category_values={
                c: {a: tuple(v) for a, v in attrs.items()}
                for c, attrs in data["category_values"].items()
            },
            street={a: tuple(v) for a, v in data["street"].items()},
        )
