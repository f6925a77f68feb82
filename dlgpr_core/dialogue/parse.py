"""Keyword parser from a free-text question to a structured probe, or None.

Deliberately conservative: the simulated user must never state a wrong fact, so any
question with two categories (relations, comparisons), two colours, a colour or material
whose target part is unclear, or no recognised cue is left unparsed and answered
"I don't know." The same parser reads statements ("The bank has a red facade."), which is
how the robot reads answers. Its vocabulary is a `Lexicon`: the robot's own by default
(`dlgpr_core.dialogue.lexicon`); a simulated user brings its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dlgpr_core.dialogue.lexicon import ROBOT_LEXICON, Lexicon
from dlgpr_core.dialogue.questions import (
    BUILDING_CATEGORIES,
    STREET,
    Question,
    attribute_question,
    presence_question,
)
from dlgpr_core.synth.terms import find_terms
from dlgpr_core.synth.vocabulary import BUILDINGS, FLOOR_WORDS

_NUMBERS = {
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
}
_PRESENCE = re.compile(
    r"\b(is there|are there|do you see|can you see|could you see|did you see|any)\b"
)
_NEGATION = re.compile(r"\b(not|no|never|nor)\b|n't\b")
_OPEN = re.compile(r"^\s*(what|which|how|describe|tell)\b")


@dataclass(frozen=True)
class Parsed:
    """A parsed question and whether its wording was negated (then answer without Yes/No)."""

    question: Question
    negated: bool


def _words(text: str, *words: str) -> bool:
    return any(re.search(rf"\b{re.escape(w)}", text) for w in words)


def _one(found: set[str]) -> str | None:
    return next(iter(found)) if len(found) == 1 else None


def _floors(text: str) -> str | None:
    m = re.search(r"\b(\d)\b", text)
    if m:
        return m.group(1)
    for word, n in _NUMBERS.items():
        if re.search(rf"\b{word}\b", text):
            return str(n)
    for n, word in FLOOR_WORDS.items():
        if word in text:
            return str(n)
    return None


def parse_question(text: str, lexicon: Lexicon = ROBOT_LEXICON) -> Parsed | None:
    """Structured probe of a free-text question (or statement), or None when not
    confidently understood with `lexicon`'s words."""
    return _parse(text, _LexiconKey(lexicon))


class _LexiconKey:
    """Hashable by identity, so parses are cached per lexicon object."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon

    def __hash__(self) -> int:
        return id(self.lexicon)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LexiconKey) and other.lexicon is self.lexicon


@lru_cache(maxsize=16384)  # bounded: every distinct utterance a robot hears passes here
def _parse(text: str, key: _LexiconKey) -> Parsed | None:
    lx = key.lexicon
    t = " ".join(text.lower().replace("’", "'").split())
    negated = bool(_NEGATION.search(t))
    is_open = bool(_OPEN.search(t))
    names = _names(text, lx)
    cats = find_terms(t, lx.categories)
    if not cats and len(names) == 1 and next(iter(names)) in _NAMED_KIND:
        cats = {_NAMED_KIND[next(iter(names))]}  # "I am by St. Mary's": the church's sign
    if not cats and _words(t, "street", "road", "pavement", "sidewalk", "buildings"):
        cats = {STREET}
    if len(cats) != 1:
        return None
    cat = next(iter(cats))
    q = _street(t, is_open, lx) if cat == STREET else _element(t, cat, names, is_open, lx)
    plain = _part(t, cat) is None and not _has_modifier(t, lx)
    if q is None and not is_open and plain and _PRESENCE.search(t):
        q = presence_question(cat)
    return None if q is None else Parsed(q, negated)


_NAMED_KIND = {n: b for b, bt in BUILDINGS.items() for n in bt.chains}
"""The kind of building each sign name of the robot's ontology belongs to."""


def _names(text: str, lx: Lexicon) -> set[str]:
    """Sign names `text` states. A name that is also a kind's word (one post office's sign
    says "Post Office") names the sign only where it is written as a name, with its
    capitals: "a post office" is the kind, and reading it as the sign made every
    description naming a post office count against post offices called otherwise, and
    left every answer about a post office's colour or storeys unread."""
    kinds = {w.lower() for words in lx.categories.values() for w in words}
    out: set[str] = set()
    for name in find_terms(text, lx.names):
        phrases = lx.names[name]
        if any(p.lower() in kinds for p in phrases) and not any(
            re.search(rf"\b{re.escape(p)}\b", text) for p in phrases
        ):
            continue
        out.add(name)
    return out


def named_kinds(text: str, lexicon: Lexicon = ROBOT_LEXICON) -> set[str]:
    """The kinds of building whose sign names `text` states ("St. Mary's": a church)."""
    return {_NAMED_KIND[n] for n in _names(text, lexicon) if n in _NAMED_KIND}


def _has_modifier(t: str, lx: Lexicon) -> bool:
    """A presence question with an extra property ("is there a red bench") is not a plain
    presence probe; without a parse of the property we must not answer it."""
    return bool(
        find_terms(t, lx.colours)
        or find_terms(t, lx.materials)
        or _words(t, "tall", "small", "low", "round", "octagonal", "big", "large")
    )


def _street(t: str, is_open: bool, lx: Lexicon) -> Question | None:
    pav = find_terms(t, {k: (*v, k) for k, v in lx.pavements.items()})
    width = find_terms(t, lx.widths)
    if pav and width:
        return None
    if is_open and width and _words(t, "how"):
        return attribute_question(STREET, "width")  # "How wide is the street?"
    if pav:
        return attribute_question(STREET, "pavement", _one(pav)) if len(pav) == 1 else None
    if width:
        return attribute_question(STREET, "width", _one(width)) if len(width) == 1 else None
    if is_open and _words(t, "pavement", "sidewalk", "paved", "surface"):
        return attribute_question(STREET, "pavement")
    if is_open and _words(t, "wide", "width", "narrow"):
        return attribute_question(STREET, "width")
    if _words(t, "buildings"):
        n = _floors(t)
        if is_open and _words(t, "how many"):
            return attribute_question(STREET, "buildings")
        return attribute_question(STREET, "buildings", n) if n else None
    return None


def _element(t: str, cat: str, names: set[str], is_open: bool, lx: Lexicon) -> Question | None:
    if cat == "crosswalk":
        return _crosswalk(t, is_open)
    if names:
        if any(_NAMED_KIND.get(n, cat) != cat for n in names):
            return None  # another building's sign ("the bakery by St. Mary's"): a relation
        return attribute_question(cat, "name", _one(names)) if len(names) == 1 else None
    if _words(t, "sign", "name", "called", "named", "say", "read"):
        return attribute_question(cat, "name") if is_open else None
    colours = find_terms(t, lx.colours)
    materials = find_terms(t, lx.materials)
    if len(colours) > 1 or len(materials) > 1:
        return None
    colour, material = _one(colours), _one(materials)
    if material == "white marble":
        colour = None  # the colour word is part of the material's name
    if material == "wood" and cat not in BUILDING_CATEGORIES:
        material = "wooden"  # furniture facts say "wooden", facades "wood"
    part = _part(t, cat)
    if part == "invalid":
        return None
    if part in ("awning", "door"):
        if material:
            return None
        if part == "awning" and colour is None and not is_open:
            if _words(t, "without", "no awning"):
                return attribute_question(cat, "awning", "none")
            # "Does the bank have awnings?": the open answer states what is there.
            return attribute_question(cat, "awning")
        if colour or (is_open and (part == "awning" or _words(t, "colour", "color"))):
            return attribute_question(cat, part, colour)
        return None
    if part == "roof":
        if colour or material:
            return None
        shape = "flat" if "flat" in t else ("gabled" if "gabled" in t else None)
        if "steeple" in t:
            ok = shape in (None, "gabled")
            return attribute_question(cat, "roof", "gabled with steeple") if ok else None
        return attribute_question(cat, "roof", shape) if shape or is_open else None
    if _words(t, "storey", "story", "storeys", "stories", "floor"):
        if colour or material:
            return None
        n = _floors(t)
        return attribute_question(cat, "floors", n) if n or is_open else None
    if colour and material:
        return None
    if colour:
        return attribute_question(cat, "colour", colour)
    if material:
        return attribute_question(cat, "material", material)
    return _prop(t, cat, is_open, lx)


def _crosswalk(t: str, is_open: bool) -> Question | None:
    """A crossing's only attribute is its style (its colour words name the style)."""
    styles = [
        v
        for v, words in (
            ("white zebra crossing", ("zebra", "white")),
            ("yellow-striped crossing", ("yellow",)),
        )
        if _words(t, *words)
    ]
    if len(styles) == 1:
        return attribute_question("crosswalk", "style", styles[0])
    if is_open and _words(t, "style", "kind", "type", "look"):
        return attribute_question("crosswalk", "style")
    return None


def _part(t: str, cat: str) -> str | None:
    """Which part a colour/material word refers to; 'invalid' when two parts are named."""
    parts = [
        p
        for p, words in (
            ("awning", ("awning", "canopy", "canopies", "sunshade")),
            ("door", ("door", "entrance")),
            ("roof", ("roof", "steeple")),
            ("facade", ("facade", "façade", "wall", "front", "painted")),
            ("window", ("window", "sign", "letter", "frame", "pole", "seat", "leg")),
        )
        if _words(t, *words)
    ]
    # "front door" names the door, not the facade.
    if "door" in parts and "facade" in parts and "front door" in t:
        parts.remove("facade")
    if len(parts) > 1 or "window" in parts:
        return "invalid"
    if parts == ["facade"] and cat not in BUILDING_CATEGORIES:
        return "invalid"
    return parts[0] if parts else None


def _prop(t: str, cat: str, is_open: bool, lx: Lexicon) -> Question | None:
    if cat == "tree":
        species = find_terms(t, lx.species)
        if len(species) == 1:
            return attribute_question(cat, "species", _one(species))
        if is_open and _words(t, "kind", "type", "species", "sort"):
            return attribute_question(cat, "species")
        size = [w for w in ("small", "tall") if _words(t, w)]
        return attribute_question(cat, "size", size[0]) if len(size) == 1 else None
    if cat == "hedge":
        height = [w for w in ("low", "tall") if _words(t, w)]
        return attribute_question(cat, "height", height[0]) if len(height) == 1 else None
    if cat == "fountain":
        shape = [w for w in ("round", "octagonal") if _words(t, w)]
        return attribute_question(cat, "shape", shape[0]) if len(shape) == 1 else None
    if cat == "statue":
        subject = [s for s in ("a horse rider", "a standing figure") if s[2:] in t]
        if len(subject) == 1:
            return attribute_question(cat, "subject", subject[0])
        if is_open and _words(t, "show", "depict", "represent"):
            return attribute_question(cat, "subject")
        return None
    if is_open and _words(t, "how many"):
        return attribute_question(cat, "count")
    if not is_open and (n := _floors(t)) is not None:
        return attribute_question(cat, "count", n)
    if is_open and _words(t, "colour", "color"):
        return attribute_question(cat, "colour")
    if is_open and _words(t, "made of", "material"):
        return attribute_question(cat, "material")
    return None
