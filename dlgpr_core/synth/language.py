"""The text layers of a place: vague caption, fine-grained description, region phrases.

Descriptions are assembled from phrases that are recorded as facts at the moment they
are written, so every fact's ``mention`` is verbatim in the text by construction (and a
simulated user can point at the exact words). Several templates per sentence type make
wording vary across places, so a text model cannot match places by sentence shape.
Only static elements are ever mentioned: never cars, people, light or season.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from dlgpr_core.data.annotations import (
    DESCRIPTION_MAX_WORDS,
    DESCRIPTION_MIN_WORDS,
    Element,
    Fact,
    Relation,
    RelationKind,
    word_count,
)
from dlgpr_core.synth import vocabulary as voc
from dlgpr_core.synth.scene import Scene, SceneElement, element_spans

STREET_ID = "s1"


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _a(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


@dataclass
class _Sentence:
    """A sentence under construction; facts point into its own text."""

    priority: int
    """0 = essential; higher numbers are dropped first when the text is too long."""
    parts: list[str] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    def say(self, text: str) -> _Sentence:
        self.parts.append(text)
        return self

    def fact(
        self, text: str, eid: str, attr: str, value: str, mention: str | None = None
    ) -> _Sentence:
        """Write ``text`` and record that it states ``attr = value`` (via ``mention``, a
        substring of ``text``, when several facts share one phrase)."""
        mention = text if mention is None else mention
        assert mention in text, (mention, text)
        self.parts.append(text)
        self.facts.append(Fact(element_id=eid, attribute=attr, value=value, mention=mention))
        return self

    def rel(self, text: str, subject: str, kind: RelationKind, obj: str) -> _Sentence:
        self.parts.append(text)
        self.relations.append(
            Relation(subject_id=subject, relation=kind, object_id=obj, mention=text)
        )
        return self

    @property
    def text(self) -> str:
        raw = "".join(self.parts)
        first = raw[:1].upper()
        if first != raw[:1]:
            # A mention that opens the sentence is capitalised with it.
            for f in self.facts:
                if raw.startswith(f.mention):
                    f.mention = first + f.mention[1:]
            for r in self.relations:
                if raw.startswith(r.mention):
                    r.mention = first + r.mention[1:]
        return first + raw[1:]


@dataclass
class PlaceText:
    caption: str
    description: str
    facts: list[Fact]
    relations: list[Relation]
    elements: list[Element]
    phrases: dict[str, str]
    """Region phrase per element id, the "greedy" noun phrase of DQ-Cities Step 2."""


def _pick(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


# --- buildings -------------------------------------------------------------------------------

POSITIONS: dict[int, tuple[tuple[str, ...], ...]] = {
    2: (("On the left", "At the left end of the row"), ("On the right", "To its right")),
    3: (
        ("On the left", "At the left end of the row"),
        ("In the middle", "Next along"),
        ("On the right", "At the right end of the row"),
    ),
    4: (
        ("On the far left", "At the left end of the row"),
        ("Second from the left", "Next along"),
        ("Second from the right", "Further along"),
        ("On the far right", "At the right end of the row"),
    ),
}


def _building_sentences(
    rng: np.random.Generator, b: SceneElement, index: int, n: int
) -> list[_Sentence]:
    a = b.attrs
    k, name, colour, material = b.category, a["name"], a["colour"], a["material"]
    floors = voc.FLOOR_WORDS[int(a["floors"])]
    options = POSITIONS[n][index]
    pos = options[_pick(rng, len(options))]
    s = _Sentence(0)
    variant = _pick(rng, 3)
    if variant == 0:
        s.say(f"{pos} stands {article(floors)} ").fact(floors, b.id, "floors", a["floors"]).say(" ")
        s.fact(colour, b.id, "colour", colour).say(" ").fact(material, b.id, "material", material)
        s.say(" ").fact(k, b.id, "category", k).say(' whose sign reads "')
        s.fact(name, b.id, "name", name).say('"')
    elif variant == 1:
        s.say(f"{pos} is ").fact(name, b.id, "name", name).say(f", {article(k)} ")
        s.fact(k, b.id, "category", k).say(f" in {article(floors)} ")
        s.fact(floors, b.id, "floors", a["floors"]).say(f" building with {article(colour)} ")
        s.fact(colour, b.id, "colour", colour).say(" ").fact(material, b.id, "material", material)
        s.say(" facade")
    else:
        s.say(f"{pos} there is {article(k)} ").fact(k, b.id, "category", k).say(" called ")
        s.fact(name, b.id, "name", name).say(f", housed in {article(floors)} ")
        s.fact(floors, b.id, "floors", a["floors"]).say(" ").fact(colour, b.id, "colour", colour)
        s.say(" ").fact(material, b.id, "material", material).say(" building")
    awning = a["awning"]
    if awning != "none":
        text = f"{awning} awnings"
        if rng.random() < 0.5:
            s.say("; it has ").fact(text, b.id, "awning", awning).say(" over the ground floor")
        else:
            s.say("; its shop front is shaded by ").fact(text, b.id, "awning", awning)
    elif rng.random() < 0.5:
        s.say(" and " if variant == 1 else "; it has ").fact("no awnings", b.id, "awning", "none")
    s.say(".")

    d = _Sentence(1)
    door = f"{a['door']} front door"
    if k == "church":
        d.say("The church has a ").fact("tall steeple", b.id, "roof", "gabled with steeple")
        d.say(" topped by a cross and ").fact(_a(door), b.id, "door", a["door"], door).say(".")
    elif _pick(rng, 2) == 0:
        roof = f"{a['roof']} roof"
        d.say(f"The {k} has ").fact(_a(roof), b.id, "roof", a["roof"], roof).say(" and ")
        d.fact(_a(door), b.id, "door", a["door"], door).say(".")
    else:
        roof = f"{a['roof']} roof"
        d.say("Its ").fact(door, b.id, "door", a["door"]).say(" sits under ")
        d.fact(_a(roof), b.id, "roof", a["roof"], roof).say(".")
    return [s, d]


def building_phrase(b: SceneElement) -> str:
    a = b.attrs
    floors = voc.FLOOR_WORDS[int(a["floors"])]
    phrase = f"the {floors} {a['colour']} {a['material']} {b.category}"
    if a["awning"] != "none":
        phrase += f" with {a['awning']} awnings"
    return phrase


# --- props -----------------------------------------------------------------------------------


def _furniture_desc(e: SceneElement, s: _Sentence) -> str:
    """Write the furniture noun phrase (with facts) into ``s``; return it for the region."""
    a, k = e.attrs, e.category
    if k == "bus stop":
        text = f"bus stop with {_a(a['colour'] + ' shelter')}"
        s.fact(text, e.id, "category", k, k)
        s.facts.append(
            Fact(
                element_id=e.id,
                attribute="colour",
                value=a["colour"],
                mention=f"{a['colour']} shelter",
            )
        )
        return text
    if k == "bench":
        text = f"{a['colour']} {a['material']} bench"
        s.fact(text, e.id, "colour", a["colour"])
        s.facts.append(
            Fact(
                element_id=e.id,
                attribute="material",
                value=a["material"],
                mention=f"{a['material']} bench",
            )
        )
    elif k == "fountain":
        text = f"{a['shape']} stone fountain"
        s.fact(text, e.id, "shape", a["shape"])
    elif k == "statue":
        text = f"{a['material']} statue of {a['subject']}"
        s.fact(text, e.id, "material", a["material"], f"{a['material']} statue")
        s.facts.append(
            Fact(
                element_id=e.id,
                attribute="subject",
                value=a["subject"],
                mention=f"statue of {a['subject']}",
            )
        )
    else:
        text = f"{a['colour']} {k}"
        s.fact(text, e.id, "colour", a["colour"])
    s.facts.append(Fact(element_id=e.id, attribute="category", value=k, mention=k))
    return text


def _furniture_sentence(
    rng: np.random.Generator, e: SceneElement, anchor: SceneElement
) -> tuple[_Sentence, str]:
    s = _Sentence(0)
    k = anchor.category
    # The article depends on the phrase, which is only known once written: write it
    # into a scratch sentence first, then splice.
    scratch = _Sentence(0)
    desc = _furniture_desc(e, scratch)
    if e.side == "near":
        if _pick(rng, 2) == 0:
            loc = f"across the street from the {k}"
            s.say("On the near pavement, ").rel(loc, e.id, "across_from", anchor.id)
            s.say(f", there is {article(desc)} ")
            s.parts.append(desc)
            s.say(".")
        else:
            loc = f"across from the {k}"
            s.say(f"{article(desc)} ")
            s.parts.append(desc)
            s.say(" stands on this side of the road, ").rel(loc, e.id, "across_from", anchor.id)
            s.say(".")
    else:
        variant = _pick(rng, 3)
        loc = (f"next to the {k}", f"beside the {k}", f"in front of the {k}")[variant]
        if variant == 0:
            s.say(f"{article(desc)} ")
            s.parts.append(desc)
            s.say(" stands ").rel(loc, e.id, "next_to", anchor.id).say(".")
        elif variant == 1:
            s.say("On the pavement ").rel(loc, e.id, "next_to", anchor.id)
            s.say(f" there is {article(desc)} ")
            s.parts.append(desc)
            s.say(".")
        else:
            s.say("Right ").rel(loc, e.id, "next_to", anchor.id).say(f" is {article(desc)} ")
            s.parts.append(desc)
            s.say(".")
    s.facts.extend(scratch.facts)
    return s, f"the {desc} {loc}"


def _prop_sentence(
    rng: np.random.Generator, e: SceneElement, anchor: SceneElement | None
) -> tuple[_Sentence, str]:
    a = e.attrs
    if e.kind == "furniture" and e.category != "lamp post":
        assert anchor is not None
        return _furniture_sentence(rng, e, anchor)
    s = _Sentence(0)
    if e.category == "lamp post":
        count = voc.COUNT_WORDS[int(a["count"])]
        text = f"{count} {a['colour']} lamp posts"
        s.say("The far pavement is lined with ").fact(text, e.id, "count", a["count"])
        s.facts.append(
            Fact(
                element_id=e.id,
                attribute="colour",
                value=a["colour"],
                mention=f"{a['colour']} lamp posts",
            )
        )
        s.facts.append(
            Fact(element_id=e.id, attribute="category", value="lamp post", mention="lamp posts")
        )
        s.say(".")
        return s, f"{_a(a['colour'])} lamp post"
    assert anchor is not None
    k = anchor.category
    if e.category == "tree":
        text = f"{a['size']} {a['species']}"
        loc = f"in front of the {k}"
        if _pick(rng, 2) == 0:
            s.say(f"{article(text)} ").fact(text, e.id, "size", a["size"])
            s.say(" grows ").rel(loc, e.id, "next_to", anchor.id).say(".")
        else:
            s.say(f"There is {article(text)} ").fact(text, e.id, "size", a["size"])
            s.say(" ").rel(loc, e.id, "next_to", anchor.id).say(".")
        s.facts.append(
            Fact(element_id=e.id, attribute="species", value=a["species"], mention=a["species"])
        )
        return s, f"the {text} {loc}"
    if e.category == "hedge":
        text = f"{a['height']} hedge"
        loc = f"along the front of the {k}"
        s.say(f"{article(text)} ").fact(text, e.id, "height", a["height"]).say(" runs ")
        s.rel(loc, e.id, "next_to", anchor.id).say(".")
        return s, f"the {text} {loc}"
    text = a["style"]
    loc = f"in front of the {k}"
    s.say(f"{article(text)} ").fact(text, e.id, "style", text).say(" crosses the road ")
    s.rel(loc, e.id, "next_to", anchor.id).say(".")
    s.facts.append(
        Fact(element_id=e.id, attribute="category", value="crosswalk", mention="crossing")
    )
    return s, f"the {text} {loc}"


# --- street, relations, fillers --------------------------------------------------------------

FILLERS = (
    "Nothing else about the street stands out.",
    "All the shop signs face the street and are easy to read from the opposite pavement.",
    "Overall it is an ordinary city block with a mix of shops and services.",
    "The whole block looks tidy and well maintained.",
    "No other landmarks are visible along this stretch of the street.",
    "The scene is described from the near pavement, looking straight across the road.",
)


def _intro(rng: np.random.Generator, scene: Scene) -> _Sentence:
    width = scene.street["width"]
    n = len(scene.buildings)
    street = f"{width} street"
    count = f"{voc.COUNT_WORDS[n]} buildings"
    s = _Sentence(0)
    variant = _pick(rng, 3)
    if variant == 0:
        s.say(f"This is {article(street)} ").fact(street, STREET_ID, "width", width)
        s.say(" with ").fact(count, STREET_ID, "buildings", str(n))
        s.say(" standing side by side along the far side of the road.")
    elif variant == 1:
        s.say(f"The view looks across {article(street)} ").fact(street, STREET_ID, "width", width)
        s.say(" at a row of ").fact(count, STREET_ID, "buildings", str(n)).say(".")
    else:
        s.say(f"Across {article(street)} ").fact(street, STREET_ID, "width", width).say(", ")
        s.fact(count, STREET_ID, "buildings", str(n)).say(" stand in a row.")
    return s


def _pavement(rng: np.random.Generator, scene: Scene) -> _Sentence:
    p = scene.street["pavement"]
    verb = ("made of", "surfaced with", "laid with")[_pick(rng, 3)]
    return _Sentence(1).say(f"The pavements are {verb} ").fact(p, STREET_ID, "pavement", p).say(".")


def _building_relation(
    rng: np.random.Generator, left: SceneElement, right: SceneElement
) -> _Sentence:
    s = _Sentence(2)
    if _pick(rng, 2) == 0:
        s.say(f"The {left.category} stands directly ")
        s.rel(f"to the left of the {right.category}", left.id, "left_of", right.id).say(".")
    else:
        s.say(f"The {right.category} is ")
        s.rel(f"to the right of the {left.category}", right.id, "right_of", left.id).say(".")
    return s


def caption(rng: np.random.Generator, scene: Scene) -> str:
    """One vague sentence naming only categories, like a half-remembered street."""
    first = scene.get(scene.caption_ids[0])
    k = first.category
    if len(scene.caption_ids) == 1:
        templates = (
            f"I remember {_a(k)} somewhere on this street.",
            f"I think I am standing near {_a(k)}.",
            f"There was {_a(k)} across the road from me.",
        )
    else:
        other = scene.get(scene.caption_ids[1])
        o = other.category
        if other.kind == "building":
            templates = (
                f"I see {_a(k)} next to {_a(o)}.",
                f"There is {_a(k)} beside {_a(o)}, I think.",
                f"I remember {_a(k)} and {_a(o)} side by side.",
            )
        elif other.side == "near":
            templates = (
                f"I see {_a(k)} with {_a(o)} across the street from it.",
                f"There is {_a(k)} and, on my side of the road, {_a(o)}.",
                f"I am near {_a(o)}, looking across at {_a(k)}.",
            )
        else:
            templates = (
                f"I see {_a(k)} with {_a(o)} beside it.",
                f"There was {_a(k)} and {_a(o)} right next to it.",
                f"I remember {_a(k)} with {_a(o)} near the entrance.",
            )
    return templates[_pick(rng, len(templates))]


def _elements(scene: Scene) -> list[Element]:
    spans = element_spans(scene)
    slots: dict[str, int] = {}
    out: list[Element] = []
    for e in sorted(scene.elements, key=lambda e: (e.side, spans[e.id][0][0])):
        slots[e.side] = slots.get(e.side, 0) + 1
        out.append(
            Element(
                id=e.id,
                kind=e.kind,
                category=e.category,
                attributes=dict(e.attrs),
                slot=slots[e.side] - 1,
                side=e.side,
            )
        )
    out.sort(key=lambda el: [x.id for x in scene.elements].index(el.id))
    out.append(
        Element(
            id=STREET_ID,
            kind="street",
            category="street",
            attributes={**scene.street, "buildings": str(len(scene.buildings))},
            side="street",
        )
    )
    return out


def describe(rng: np.random.Generator, scene: Scene) -> PlaceText:
    """Caption, description and grounded facts for a finalized scene."""
    buildings = scene.buildings
    sentences: list[_Sentence] = [_intro(rng, scene)]
    phrases: dict[str, str] = {}
    for i, b in enumerate(buildings):
        sentences += _building_sentences(rng, b, i, len(buildings))
        phrases[b.id] = building_phrase(b)
    for left, right in pairwise(buildings):
        sentences.append(_building_relation(rng, left, right))
    spans = element_spans(scene)
    props = sorted(
        scene.props, key=lambda e: (e.side == "near", e.category == "lamp post", spans[e.id][0][0])
    )
    for e in props:
        s, phrase = _prop_sentence(rng, e, scene.get(e.anchor) if e.anchor else None)
        sentences.append(s)
        phrases[e.id] = phrase
    sentences.append(_pavement(rng, scene))

    def total() -> int:
        return sum(word_count(s.text) for s in sentences)

    while total() > DESCRIPTION_MAX_WORDS:
        worst = max(range(len(sentences)), key=lambda i: (sentences[i].priority, i))
        if sentences[worst].priority == 0:
            break
        del sentences[worst]
    fillers = [FILLERS[int(i)] for i in rng.permutation(len(FILLERS))]
    while total() < DESCRIPTION_MIN_WORDS and fillers:
        sentences.append(_Sentence(3).say(fillers.pop()))
    description = " ".join(s.text for s in sentences)
    facts = [f for s in sentences for f in s.facts]
    relations = [r for s in sentences for r in s.relations]
    return PlaceText(
        caption=caption(rng, scene),
        description=description,
        facts=facts,
        relations=relations,
        elements=_elements(scene),
        phrases=phrases,
    )
