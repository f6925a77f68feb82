"""Structured questions and the sentences that ask and answer them.

A question is kept together with the probe it came from, so the simulated user can answer a
generated question exactly (no parsing, no chance of a wrong fact) while free text from an
LLM questioner still goes through the keyword parser of `dlgpr_core.dialogue.parse`. The
statement templates live here too, because the answer to a question becomes retrieval text
and must read like the descriptions the retriever was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlgpr_core.synth.vocabulary import COUNT_WORDS, FLOOR_WORDS

ProbeKind = Literal["presence", "attribute", "free"]

BUILDING_CATEGORIES = frozenset(
    {
        "bank",
        "cafe",
        "pharmacy",
        "hotel",
        "church",
        "bakery",
        "bookshop",
        "supermarket",
        "restaurant",
        "post office",
        "florist",
        "hardware store",
    }
)
"""Categories whose ``colour`` is the facade's (kept literal to avoid importing the
generator's BUILDINGS table just for its keys; a test checks that they agree)."""

STREET = "street"
"""The pseudo-category of the street element (width, pavement, number of buildings)."""


@dataclass(frozen=True)
class Question:
    """One question: its text and the structured probe it asks.

    ``kind == "presence"``: "Is there a fountain?" (``attribute``/``value`` are None).
    ``kind == "attribute"`` with a ``value``: a yes/no probe ("Does the pharmacy have green
    awnings?"); with ``value`` None: a short open question ("What does the sign of the cafe
    say?"). ``kind == "free"``: free text from an LLM questioner, with no probe behind it
    (``category`` is empty); users parse or read it. ``text`` is what a human or an
    LLM-based user would read.
    """

    text: str
    kind: ProbeKind
    category: str
    attribute: str | None = None
    value: str | None = None
    reasoning: str = field(default="", compare=False)
    """Why the questioner asked (an LLM's <think> block); empty for rule-based questioners."""
    fallback: bool = field(default=False, compare=False)
    """True when the questioner's own output was unusable and a fallback question was asked."""

    @property
    def key(self) -> tuple[str, str, str | None, str | None]:
        """Identity of the probe, ignoring phrasing: asking it twice adds nothing.

        A free question has no probe, so its normalised text is its identity."""
        if self.kind == "free":
            return ("free", " ".join(self.text.lower().split()).rstrip("?. "), None, None)
        return (self.kind, self.category, self.attribute, self.value)

    @property
    def is_open(self) -> bool:
        """An open question (its answer states a value) rather than a yes/no one."""
        return self.kind == "attribute" and self.value is None


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def plural(category: str) -> str:
    """English plural of a category noun (enough for the closed SynthCities vocabulary)."""
    if category.endswith(("s", "sh", "ch", "x")):
        return category + "es"
    return category + "s"


def _number(value: str) -> str:
    # isdecimal, not isdigit: "²" is a digit that int() refuses
    return COUNT_WORDS.get(int(value), value) if value.isdecimal() else value


def _floors(value: str) -> str:
    return FLOOR_WORDS.get(int(value), f"{value}-storey") if value.isdecimal() else value


def _phrasings(category: str, attribute: str, value: str) -> tuple[str, str]:
    """(statement, yes/no question) for ``attribute = value`` of the category: one table of
    wordings, so that what the robot asks and what the user answers always match."""
    c = category
    if c == STREET:
        if attribute == "width":
            return f"The street is {value}.", f"Is the street {value}?"
        if attribute == "pavement":
            return (
                f"The pavements are laid with {value}.",
                f"Are the pavements laid with {value}?",
            )
        if attribute == "buildings":
            n = _number(value)
            return (
                f"There are {n} buildings along the street.",
                f"Are there {n} buildings along the street?",
            )
        return f"The street's {attribute} is {value}.", f"Is the street's {attribute} {value}?"
    building = c in BUILDING_CATEGORIES
    plain = (f"The {c} is {value}.", f"Is the {c} {value}?")
    if attribute == "name":
        return f'The sign of the {c} says "{value}".', f'Is the {c} called "{value}"?'
    if attribute == "colour":
        if building:
            return (
                f"The {c} has {article(value)} {value} facade.",
                f"Does the {c} have {article(value)} {value} facade?",
            )
        if c == "bus stop":
            return (
                f"The bus stop has {article(value)} {value} shelter.",
                f"Does the bus stop have {article(value)} {value} shelter?",
            )
        if c == "lamp post":
            return f"The lamp posts are {value}.", f"Are the lamp posts {value}?"
        return plain
    if attribute == "material":
        if building:
            return f"The {c} is built of {value}.", f"Is the {c} built of {value}?"
        if c == "statue":
            return f"The statue is made of {value}.", f"Is the statue made of {value}?"
        return plain
    if attribute == "floors":
        floors = f"{article(_floors(value))} {_floors(value)} building"
        return f"The {c} is {floors}.", f"Is the {c} {floors}?"
    if attribute == "awning":
        if value == "none":
            return f"The {c} has no awnings.", f"Is the {c} without awnings?"
        return f"The {c} has {value} awnings.", f"Does the {c} have {value} awnings?"
    if attribute == "door":
        door = f"{article(value)} {value} front door"
        return f"The {c} has {door}.", f"Does the {c} have {door}?"
    if attribute == "roof":
        if value.startswith("gabled with "):
            roof = f"a gabled roof with {article(value[12:])} {value[12:]}"
        else:
            roof = f"{article(value)} {value} roof"
        return f"The {c} has {roof}.", f"Does the {c} have {roof}?"
    if attribute == "count":
        n = _number(value)
        return f"There are {n} {plural(c)}.", f"Are there {n} {plural(c)}?"
    if attribute == "species":
        return f"The {c} is {article(value)} {value}.", f"Is the {c} {article(value)} {value}?"
    if attribute == "subject":
        return f"The {c} shows {value}.", f"Does the {c} show {value}?"
    if attribute == "style":
        return f"The {c} is {article(value)} {value}.", plain[1]
    return plain


def statement(category: str, attribute: str, value: str) -> str:
    """One short declarative sentence stating ``attribute = value`` of the category.

    Worded like the SynthCities descriptions, because the sentence is appended to the
    retrieval query.
    """
    return _phrasings(category, attribute, value)[0]


def presence_statement(category: str, present: bool) -> str:
    """'There is a fountain.' / 'There is no fountain.'"""
    if present:
        return f"There is {article(category)} {category}."
    return f"There is no {category}."


def _yes_no_text(category: str, attribute: str, value: str) -> str:
    return _phrasings(category, attribute, value)[1]


_OPEN_TEXT = {
    "name": "What does the sign of the {c} say?",
    "colour": "What colour is the {c}?",
    "material": "What is the {c} made of?",
    "floors": "How many storeys does the {c} have?",
    "awning": "What are the awnings of the {c} like?",
    "door": "What colour is the front door of the {c}?",
    "roof": "What kind of roof does the {c} have?",
    "count": "How many {p} are there?",
    "species": "What kind of tree is it?",
    "subject": "What does the {c} show?",
}

_OPEN_STREET = {
    "width": "How wide is the street?",
    "pavement": "What are the pavements laid with?",
    "buildings": "How many buildings are there along the street?",
}


def _open_text(category: str, attribute: str) -> str:
    if category == STREET:
        return _OPEN_STREET.get(attribute, f"What is the {attribute} of the street?")
    template = _OPEN_TEXT.get(attribute, "What is the {a} of the {c} like?")
    return template.format(c=category, p=plural(category), a=attribute)


def presence_question(category: str) -> Question:
    """'Is there a fountain?'"""
    return Question(f"Is there {article(category)} {category}?", "presence", category)


def attribute_question(category: str, attribute: str, value: str | None = None) -> Question:
    """A yes/no probe when ``value`` is given, else a short open question."""
    text = (
        _open_text(category, attribute)
        if value is None
        else _yes_no_text(category, attribute, value)
    )
    return Question(text, "attribute", category, attribute, value)


def free_question(text: str, reasoning: str = "", fallback: bool = False) -> Question:
    """A question known only by its wording (an LLM questioner's output)."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("a question needs some text")
    return Question(text=cleaned, kind="free", category="", reasoning=reasoning, fallback=fallback)
