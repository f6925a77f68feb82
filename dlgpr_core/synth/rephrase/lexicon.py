"""The evaluation-only vocabulary: other words for everything SynthCities can contain.

Kept apart from `dlgpr_core.synth.vocabulary` on purpose: a retriever trained on the
generator's words must be tested on words it never saw together with these places.
Every synonym here is chosen to stay TRUE for the value it replaces (a ``beige`` facade
may be called ``sand-coloured`` or ``tan``, never ``brown``), because an evaluation
query that states a false fact measures the query set, not the retriever.

The same tables drive `find_terms`, which maps the words of a text back to categories
and colours; the tests use it to prove that no statement is invented. The robot reads
answers with a lexicon of its own (`dlgpr_core.dialogue.lexicon`), never these tables, so
how well it understands people is measured, not given.
"""

from __future__ import annotations

CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    # buildings
    "bank": ("bank", "bank branch"),
    "cafe": ("coffee shop", "coffee place", "café"),
    "pharmacy": ("chemist", "drugstore", "chemist's"),
    "hotel": ("hotel",),
    "church": ("church",),
    "bakery": ("bakery", "baker's", "bread shop"),
    "bookshop": ("bookstore", "book shop", "bookseller's"),
    "supermarket": ("grocery store", "grocer's", "food store"),
    "restaurant": ("restaurant", "eatery"),
    "post office": ("post office",),
    "florist": ("flower shop", "florist's"),
    "hardware store": ("hardware shop", "DIY store", "tool shop"),
    # furniture, vegetation, markings
    "phone booth": ("phone box", "telephone box", "payphone"),
    "bus stop": ("bus shelter",),
    "bench": ("bench", "park bench"),
    "fountain": ("fountain",),
    "statue": ("statue", "sculpture"),
    "traffic light": ("traffic signal", "stoplight"),
    "mailbox": ("postbox", "letter box", "mail box"),
    "lamp post": ("street light", "streetlamp"),
    "tree": ("tree",),
    "hedge": ("bushes", "hedgerow", "row of shrubs"),
    "crosswalk": ("zebra crossing", "pedestrian crossing", "crosswalk"),
}
"""Nouns the rephraser may use for each element category (chosen at random)."""

DETECT_EXTRA: dict[str, tuple[str, ...]] = {
    # The generator's own words and bare species names also count as mentions, so a
    # leak of any of them is caught by `find_terms` too.
    "cafe": ("cafe",),
    "pharmacy": ("pharmacy",),
    "bookshop": ("bookshop",),
    "supermarket": ("supermarket", "grocery"),
    "florist": ("florist",),
    "hardware store": ("hardware store",),
    "phone booth": ("phone booth", "telephone booth"),
    "bus stop": ("bus stop",),
    "traffic light": ("traffic light",),
    "mailbox": ("mailbox",),
    "lamp post": ("lamp post", "lamppost", "streetlight"),
    "tree": ("birch", "linden", "lime tree", "plane tree", "plane", "pine"),
    "hedge": ("hedge", "shrubs", "bush"),
    "crosswalk": ("crossing",),
}

SPECIES_SYNONYMS: dict[str, tuple[str, ...]] = {
    "plane tree": ("plane tree", "plane"),
    "linden tree": ("lime tree", "linden"),
    "birch": ("birch tree", "birch"),
    "pine tree": ("pine", "pine tree"),
}

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "reddish"),
    "brown": ("brown", "brownish"),
    "yellow": ("yellow", "yellowish"),
    "grey": ("gray", "grey", "greyish"),
    "white": ("white",),
    "cream": ("cream-coloured", "off-white", "creamy"),
    "beige": ("sand-coloured", "tan", "beige"),
    "pink": ("pink", "pinkish"),
    "pale blue": ("light blue", "baby blue", "pale blue"),
    "blue": ("blue",),
    "green": ("green",),
    "orange": ("orange", "orangey"),
    "black": ("black",),
    "dark": ("dark", "dark-coloured"),
    "silver": ("silver",),
}
"""Near-synonyms per SynthCities colour; only ones that describe the same rendered RGB."""

MATERIAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "brick": ("brick", "brickwork"),
    "stone": ("stone", "stonework"),
    "glass": ("glass", "glass-fronted"),
    "stucco": ("plaster", "rendered", "painted plaster"),
    "wood": ("wooden", "timber"),
}

PAVEMENT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "grey paving slabs": ("grey slabs", "gray flagstones", "grey paving stones"),
    "red brick paving": ("red bricks", "reddish brick", "red paving bricks"),
    "plain asphalt": ("tarmac", "blacktop", "just asphalt"),
    "cobblestones": ("cobbles", "cobblestones", "old cobbles"),
}

WIDTH_SYNONYMS: dict[str, tuple[str, ...]] = {
    "narrow": ("narrow", "pretty narrow", "quite narrow"),
    "wide": ("wide", "broad", "big wide"),
}

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

TRANSIENT_WORDS = frozenset(
    {
        "car",
        "cars",
        "van",
        "truck",
        "pedestrian",
        "pedestrians",
        "people",
        "person",
        "man",
        "woman",
        "crowd",
        "parked",
        "traffic",
        "sunny",
        "night",
        "morning",
        "evening",
        "dusk",
        "snow",
        "winter",
        "summer",
        "autumn",
        "spring",
        "shadow",
        "shadows",
    }
)
"""Words a description must never contain: occluders and capture conditions are not facts
of the place. (``traffic`` only occurs inside ``traffic signal``, masked first.)"""


def category_lexicon() -> dict[str, tuple[str, ...]]:
    """Every word that names a category: the synonyms above plus the generator's words."""
    return {
        k: tuple(dict.fromkeys(v + DETECT_EXTRA.get(k, ()) + (k,)))
        for k, v in CATEGORY_SYNONYMS.items()
    }
