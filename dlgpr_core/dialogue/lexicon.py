"""The robot's own English for reading questions and answers: words for categories and values.

The robot understands people only as well as its vocabulary lets it. This lexicon is the
robot's: the generator's (ontology) words plus common everyday synonyms, written here and
never taken from the evaluation rephraser (`dlgpr_core.synth.rephrase.lexicon`), whose words
the simulated people use; otherwise the measurement of how well the robot reads answers
would be rigged. A simulated user parses with a lexicon of its own, built elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dlgpr_core.synth.vocabulary import BUILDINGS

Terms = Mapping[str, tuple[str, ...]]
"""Canonical value -> the phrases that name it."""


@dataclass(frozen=True)
class Lexicon:
    """What a reader of questions and answers recognises."""

    categories: Terms
    colours: Terms
    materials: Terms
    """Including the furniture materials (wooden, metal, bronze, white marble)."""
    pavements: Terms
    species: Terms
    widths: Terms
    names: Terms = field(default_factory=lambda: _chain_names())
    """Sign names: proper names are read as written."""


def _chain_names() -> dict[str, tuple[str, ...]]:
    return {n: (n,) for b in BUILDINGS.values() for n in b.chains}


ROBOT_LEXICON = Lexicon(
    categories={
        "bank": ("bank",),
        "cafe": ("cafe", "café", "coffee shop", "coffeehouse"),
        "pharmacy": ("pharmacy", "drugstore", "chemist"),
        "hotel": ("hotel",),
        "church": ("church", "chapel"),
        "bakery": ("bakery", "bakeshop"),
        "bookshop": ("bookshop", "bookstore", "book store"),
        "supermarket": ("supermarket", "grocery store", "grocery"),
        "restaurant": ("restaurant", "diner"),
        "post office": ("post office",),
        "florist": ("florist", "flower shop"),
        "hardware store": ("hardware store", "hardware shop"),
        "phone booth": ("phone booth", "telephone booth", "phone box"),
        "bus stop": ("bus stop", "bus shelter"),
        "bench": ("bench",),
        "fountain": ("fountain",),
        "statue": ("statue", "monument"),
        "traffic light": ("traffic light", "stoplight"),
        "mailbox": ("mailbox", "postbox"),
        "lamp post": ("lamp post", "lamppost", "street lamp", "streetlight"),
        "tree": ("tree", "plane tree", "linden", "birch", "pine"),
        "hedge": ("hedge", "bushes"),
        "crosswalk": ("crosswalk", "zebra crossing", "crossing"),
    },
    colours={
        "red": ("red",),
        "brown": ("brown",),
        "yellow": ("yellow",),
        "grey": ("grey", "gray"),
        "white": ("white",),
        "cream": ("cream",),
        "beige": ("beige", "tan"),
        "pink": ("pink",),
        "pale blue": ("pale blue", "light blue"),
        "blue": ("blue",),
        "green": ("green",),
        "orange": ("orange",),
        "black": ("black",),
        "dark": ("dark",),
        "silver": ("silver",),
    },
    materials={
        "brick": ("brick",),
        "stone": ("stone",),
        "glass": ("glass",),
        "stucco": ("stucco", "plaster"),
        "wood": ("wood", "wooden", "timber"),
        "metal": ("metal",),
        "bronze": ("bronze",),
        "white marble": ("marble",),
    },
    pavements={
        "grey paving slabs": ("grey paving slabs", "paving slabs"),
        "red brick paving": ("red brick paving", "brick paving"),
        "plain asphalt": ("plain asphalt", "asphalt"),
        "cobblestones": ("cobblestones", "cobbles"),
    },
    species={
        "plane tree": ("plane tree", "plane"),
        "linden tree": ("linden tree", "linden"),
        "birch": ("birch",),
        "pine tree": ("pine tree", "pine"),
    },
    widths={"narrow": ("narrow",), "wide": ("wide", "broad")},
)
