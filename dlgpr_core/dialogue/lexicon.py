"""The robot's own English for reading questions and answers: words for categories and values.

The robot understands people only as well as its vocabulary lets it. This lexicon is the
robot's: the generator's (ontology) words plus common everyday synonyms and hedged forms
("reddish"), written here and never imported from the evaluation rephraser
(`dlgpr_core.synth.rephrase.lexicon`), whose words the simulated people use; otherwise the
measurement of how well the robot reads answers would be rigged. It was extended once after
reading the validation city's unread answers (2026-12-02), never on the test city. A
simulated user parses with a lexicon of its own, built elsewhere.
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
    colours={  # with the usual -ish/-y forms people hedge colours with
        "red": ("red", "reddish"),
        "brown": ("brown", "brownish"),
        "yellow": ("yellow", "yellowish"),
        "grey": ("grey", "gray", "greyish", "grayish"),
        "white": ("white", "whitish"),
        "cream": ("cream", "creamy", "cream-coloured", "cream-colored"),
        "beige": ("beige", "tan"),
        "pink": ("pink", "pinkish"),
        "pale blue": ("pale blue", "light blue"),
        "blue": ("blue", "bluish"),
        "green": ("green", "greenish"),
        "orange": ("orange", "orangey", "orangish"),
        "black": ("black", "blackish"),
        "dark": ("dark",),
        "silver": ("silver", "silvery"),
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
        "grey paving slabs": ("grey paving slabs", "paving slabs", "flagstones", "paving stones"),
        "red brick paving": ("red brick paving", "brick paving", "bricks"),
        "plain asphalt": ("plain asphalt", "asphalt", "tarmac"),
        "cobblestones": ("cobblestones", "cobbles"),
    },
    species={
        "plane tree": ("plane tree", "plane"),
        "linden tree": ("linden tree", "linden", "lime tree"),
        "birch": ("birch",),
        "pine tree": ("pine tree", "pine"),
    },
    widths={"narrow": ("narrow",), "wide": ("wide", "broad")},
)
