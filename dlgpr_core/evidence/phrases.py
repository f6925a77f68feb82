"""Short descriptive phrases for structured evidence slots ("a bank with green awnings").

Every structured evidence item also carries a phrase, so consumers that only read text (a
VLM questioner's prompt, a lexical index, a person reading `dlgpr map info`) need no slot
vocabulary. The wording is deliberately plain and stable: it is read, not matched.
"""

from __future__ import annotations

from dlgpr_core.evidence.slots import PRESENCE, STREET

_FLOORS = {
    "1": "single-storey",
    "2": "two-storey",
    "3": "three-storey",
    "4": "four-storey",
    "5": "five-storey",
    "6": "six-storey",
}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def slot_phrase(category: str, attribute: str, value: str) -> str:
    """The phrase for one slot; `attribute` ``"category"`` is the thing itself."""
    c = category
    if attribute == PRESENCE or not attribute:
        return f"{article(c)} {c}"
    if c == STREET:
        if attribute == "pavement":
            return f"pavements of {value}"
        return f"{article(value)} {value} street"
    if attribute == "name":
        return f'{article(c)} {c} whose sign reads "{value}"'
    if attribute == "awning":
        return (
            f"{article(c)} {c} without awnings"
            if value == "none"
            else (f"{article(c)} {c} with {value} awnings")
        )
    if attribute == "door":
        return f"{article(c)} {c} with {article(value)} {value} front door"
    if attribute == "roof":
        return f"{article(c)} {c} with {article(value)} {value} roof"
    if attribute == "floors":
        words = _FLOORS.get(value, f"{value}-storey")
        return f"{article(words)} {words} {c}"
    if attribute == "count":
        return f"{value} {c}s"
    if attribute in ("colour", "material", "size", "height", "shape"):
        return f"{article(value)} {value} {c}"
    if attribute == "species":
        return f"{article(value)} {value}"
    if attribute == "subject":
        return f"{article(c)} {c} of {value}"
    if attribute == "style":
        return f"{article(value)} {value}"
    return f"{article(c)} {c} ({attribute}: {value})"
