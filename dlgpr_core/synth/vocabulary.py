"""The closed world SynthCities draws from: element kinds, chain names, colours, materials.

Kept small on purpose: chain names and categories recur across places, which is what
makes a vague first caption ambiguous and forces follow-up questions, as in DQ-Cities.
Every word here is both rendered and written, so text and pixels cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (168, 58, 46),
    "brown": (118, 80, 54),
    "yellow": (218, 186, 84),
    "grey": (138, 138, 136),
    "white": (232, 231, 224),
    "cream": (236, 224, 192),
    "beige": (204, 184, 148),
    "pink": (224, 158, 162),
    "pale blue": (160, 190, 214),
    "blue": (52, 88, 160),
    "green": (58, 118, 70),
    "orange": (222, 128, 56),
    "black": (34, 34, 36),
    "dark": (52, 58, 70),
    "silver": (184, 190, 196),
}

MATERIAL_COLOURS: dict[str, tuple[str, ...]] = {
    "brick": ("red", "brown", "yellow", "grey"),
    "stone": ("grey", "beige", "white"),
    "glass": ("blue", "green", "grey", "dark"),
    "stucco": ("white", "cream", "yellow", "pink", "pale blue", "orange", "beige"),
    "wood": ("brown", "white", "green", "red"),
}

AWNING_COLOURS = ("red", "green", "blue", "yellow", "white", "orange", "black")
DOOR_COLOURS = ("red", "green", "blue", "black", "white", "brown", "yellow")
ROOFS = ("flat", "gabled")

FLOOR_WORDS = {
    1: "single-storey",
    2: "two-storey",
    3: "three-storey",
    4: "four-storey",
    5: "five-storey",
    6: "six-storey",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass(frozen=True)
class BuildingType:
    """What a category of building may look like."""

    chains: tuple[str, ...]
    """Sign names, shared across places like real chains."""
    floors: tuple[int, int]
    materials: tuple[str, ...]
    width: tuple[float, float]
    awning_p: float


BUILDINGS: dict[str, BuildingType] = {
    "bank": BuildingType(
        ("First City Bank", "Union Savings", "Harbor Trust"),
        (2, 5),
        ("stone", "glass", "brick"),
        (9.0, 13.0),
        0.1,
    ),
    "cafe": BuildingType(
        ("Cafe Aroma", "Bean Corner", "Morning Cup"),
        (1, 4),
        ("brick", "stucco", "wood", "stone"),
        (7.0, 10.0),
        0.8,
    ),
    "pharmacy": BuildingType(
        ("City Pharmacy", "GreenCross", "Apotheca"),
        (1, 4),
        ("brick", "stucco", "glass"),
        (7.0, 10.0),
        0.4,
    ),
    "hotel": BuildingType(
        ("Hotel Aurora", "Grand Plaza", "Hotel Central"),
        (4, 6),
        ("stone", "stucco", "glass", "brick"),
        (11.0, 15.0),
        0.3,
    ),
    "church": BuildingType(
        ("St. Mary's", "Grace Chapel", "St. Peter's"),
        (2, 3),
        ("stone", "brick"),
        (10.0, 13.0),
        0.0,
    ),
    "bakery": BuildingType(
        ("Golden Crust", "Daily Bread", "Petit Four"),
        (1, 3),
        ("brick", "stucco", "wood"),
        (6.0, 9.0),
        0.7,
    ),
    "bookshop": BuildingType(
        ("Page Turner", "The Book Nook", "Chapter One"),
        (1, 4),
        ("brick", "wood", "stucco"),
        (6.0, 9.0),
        0.5,
    ),
    "supermarket": BuildingType(
        ("FreshMart", "Value Grocer", "Market Basket"),
        (1, 2),
        ("glass", "brick", "stucco"),
        (12.0, 16.0),
        0.2,
    ),
    "restaurant": BuildingType(
        ("Luigi's", "Golden Dragon", "The Oak Grill"),
        (1, 4),
        ("brick", "stucco", "wood", "stone"),
        (7.0, 11.0),
        0.7,
    ),
    "post office": BuildingType(
        ("Post Office", "City Post"),
        (2, 3),
        ("brick", "stone"),
        (8.0, 11.0),
        0.1,
    ),
    "florist": BuildingType(
        ("Bloom and Petal", "Flower Corner"),
        (1, 3),
        ("wood", "stucco", "brick"),
        (6.0, 8.0),
        0.8,
    ),
    "hardware store": BuildingType(
        ("Handy Hardware", "Tool Depot"),
        (1, 2),
        ("brick", "wood", "stucco"),
        (8.0, 11.0),
        0.4,
    ),
}


@dataclass(frozen=True)
class PropType:
    """A street furniture, vegetation or marking category and its free attributes."""

    kind: str
    attributes: dict[str, tuple[str, ...]]
    sides: tuple[str, ...]
    """Where it may stand: ``far`` pavement (in front of the facades) or ``near`` pavement."""
    width: float
    """Footprint along the street, metres."""


FURNITURE: dict[str, PropType] = {
    "phone booth": PropType(
        "furniture", {"colour": ("red", "blue", "green", "yellow")}, ("far", "near"), 1.1
    ),
    "bus stop": PropType(
        "furniture", {"colour": ("green", "blue", "grey", "red")}, ("far", "near"), 3.0
    ),
    "bench": PropType(
        "furniture",
        {"colour": ("green", "black", "brown"), "material": ("wooden", "metal")},
        ("far", "near"),
        1.8,
    ),
    "fountain": PropType("furniture", {"shape": ("round", "octagonal")}, ("far",), 2.8),
    "statue": PropType(
        "furniture",
        {"material": ("bronze", "white marble"), "subject": ("a horse rider", "a standing figure")},
        ("far",),
        1.6,
    ),
    "traffic light": PropType(
        "furniture", {"colour": ("black", "yellow", "grey")}, ("far", "near"), 0.5
    ),
    "mailbox": PropType(
        "furniture", {"colour": ("red", "blue", "yellow", "green")}, ("far", "near"), 0.7
    ),
}

LAMP_POST = PropType("furniture", {"colour": ("black", "green", "grey")}, ("far",), 0.3)

TREE = PropType(
    "vegetation",
    {"species": ("plane tree", "linden tree", "birch", "pine tree"), "size": ("small", "tall")},
    ("far",),
    3.0,
)
HEDGE = PropType("vegetation", {"height": ("low", "tall")}, ("far",), 5.0)
CROSSWALK = PropType(
    "marking", {"style": ("white zebra crossing", "yellow-striped crossing")}, ("road",), 4.0
)

STREET_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "width": ("narrow", "wide"),
    "pavement": ("grey paving slabs", "red brick paving", "plain asphalt", "cobblestones"),
}

PAVEMENT_COLOURS: dict[str, RGB] = {
    "grey paving slabs": (150, 150, 146),
    "red brick paving": (150, 92, 78),
    "plain asphalt": (92, 92, 96),
    "cobblestones": (120, 112, 104),
}

STATUE_MATERIAL_COLOURS: dict[str, RGB] = {"bronze": (104, 84, 52), "white marble": (226, 224, 218)}

TIMES_OF_DAY = ("morning", "noon", "afternoon", "evening", "dusk")
SEASONS = ("spring", "summer", "autumn", "winter")
SEASON_MONTHS: dict[str, tuple[int, ...]] = {
    "spring": (3, 4, 5),
    "summer": (6, 7, 8),
    "autumn": (9, 10, 11),
    "winter": (12, 1, 2),
}
CAR_COLOURS: tuple[RGB, ...] = (
    (200, 30, 30),
    (30, 30, 34),
    (220, 220, 220),
    (40, 70, 150),
    (150, 150, 155),
    (30, 100, 60),
    (230, 190, 40),
)
