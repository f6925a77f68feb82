"""What the robot can know about a place: the categories of things and their attributes.

This is the robot's ontology, the label space of its evidence models (like a detector's
class list): the categories it can recognise and, for each, the attributes and values it can
tell apart. It says nothing about any particular place. It is drawn from the SynthCities
vocabulary because that is the world the shipped models were trained on; a map of real
images can use evidence from an open-vocabulary annotator (zero-shot phrases, a teacher's
noun phrases) whose items carry no slot at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from dlgpr_core.mapdb.evidence import PRESENCE as PRESENCE  # re-exported: one definition
from dlgpr_core.synth import vocabulary as voc

STREET = "street"
"""The pseudo-category of the street itself (width, pavement)."""


@dataclass(frozen=True)
class Slot:
    """A category and the values each of its attributes may take."""

    category: str
    kind: str
    """building, furniture, vegetation, marking or street."""
    attributes: dict[str, tuple[str, ...]]


def _building_slot(category: str, bt: voc.BuildingType) -> Slot:
    colours = sorted({c for m in bt.materials for c in voc.MATERIAL_COLOURS[m]})
    floors = tuple(str(n) for n in range(bt.floors[0], bt.floors[1] + 1))
    # a church's roof is always described with its steeple (and so answered that way)
    roofs = ("gabled with steeple",) if category == "church" else voc.ROOFS
    return Slot(
        category,
        "building",
        {
            "name": bt.chains,
            "colour": tuple(colours),
            "material": bt.materials,
            "floors": floors,
            "awning": ("none", *voc.AWNING_COLOURS),
            "roof": roofs,
            "door": voc.DOOR_COLOURS,
        },
    )


@cache
def slots() -> dict[str, Slot]:
    """Every category the robot knows, by name."""
    out = {c: _building_slot(c, bt) for c, bt in voc.BUILDINGS.items()}
    for c, pt in voc.FURNITURE.items():
        out[c] = Slot(c, pt.kind, dict(pt.attributes))
    lamp = dict(voc.LAMP_POST.attributes, count=("2", "3", "4"))
    out["lamp post"] = Slot("lamp post", voc.LAMP_POST.kind, lamp)
    out["tree"] = Slot("tree", voc.TREE.kind, dict(voc.TREE.attributes))
    out["hedge"] = Slot("hedge", voc.HEDGE.kind, dict(voc.HEDGE.attributes))
    out["crosswalk"] = Slot("crosswalk", voc.CROSSWALK.kind, dict(voc.CROSSWALK.attributes))
    out[STREET] = Slot(STREET, "street", dict(voc.STREET_ATTRIBUTES))
    return out


def categories() -> list[str]:
    """The visible categories (the street is always there, so it is not one of them)."""
    return [c for c in slots() if c != STREET]


def values(category: str, attribute: str) -> tuple[str, ...]:
    """The values `attribute` of `category` may take; empty when unknown."""
    slot = slots().get(category)
    return slot.attributes.get(attribute, ()) if slot else ()
