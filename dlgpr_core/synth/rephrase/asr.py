"""Speech-recognition noise for evaluation queries.

A robot hears its user through an ASR model (Whisper), so the text the retriever gets
has the typical errors of one: sound-alike words (``there``/``their``, ``flour`` for
``flower``), dropped short function words, word-boundary slips (``phonebox``), numbers
written as digits, stray fillers, no case and no punctuation. Only confusions that real
recognisers make are listed; spelling noise no recogniser would produce is left out.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

HOMOPHONES: dict[str, tuple[str, ...]] = {
    "there": ("their", "they're"),
    "their": ("there",),
    "there's": ("theirs", "there is"),
    "to": ("too", "two"),
    "too": ("to", "two"),
    "two": ("to", "too"),
    "for": ("four",),
    "four": ("for",),
    "one": ("won",),
    "eight": ("ate",),
    "right": ("write", "rite"),
    "by": ("buy", "bye"),
    "blue": ("blew",),
    "red": ("read",),
    "grey": ("gray", "great"),
    "gray": ("grey",),
    "brick": ("break", "brig"),
    "bricks": ("breaks",),
    "beige": ("bays", "baize"),
    "café": ("cafe", "calf a"),
    "cafe": ("café", "calf a"),
    "awning": ("owning",),
    "awnings": ("ownings", "awning"),
    "storey": ("story",),
    "story": ("storey",),
    "stories": ("storeys",),
    "flower": ("flour",),
    "mail": ("male",),
    "plain": ("plane",),
    "plane": ("plain",),
    "lime": ("line",),
    "yellow": ("hello",),
    "wooden": ("wouldn't",),
    "wood": ("would",),
    "hedge": ("edge",),
    "road": ("rode", "rowed"),
    "its": ("it's",),
    "it's": ("its",),
    "then": ("than",),
    "and": ("an", "in"),
    "an": ("and",),
    "the": ("a",),
    "a": ("the",),
    "of": ("have",),
    "were": ("where",),
    "where": ("wear", "were"),
    "see": ("sea",),
    "whole": ("hole",),
    "here": ("hear",),
    "steel": ("steal",),
    "bread": ("bred",),
    "sign": ("sine",),
    "chemist": ("chemists",),
    "tan": ("ten",),
    "pine": ("pain",),
    "tall": ("tool",),
    "canopy": ("canapé",),
    "pointy": ("pointed",),
    "marble": ("marvel",),
    "bronze": ("bronx",),
    "birch": ("burch",),
    "cobbles": ("cobble's",),
    "sidewalk's": ("sidewalks",),
    "road's": ("roads",),
    "door's": ("doors",),
    "roof's": ("roofs",),
}
"""Sound-alike confusions; values are what the recogniser writes instead."""

NUMBERS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
}
DIGITS = {v: k for k, v in NUMBERS.items()}

FUNCTION_WORDS = frozenset(
    {"the", "a", "an", "of", "to", "and", "is", "it", "that", "in", "on", "with", "so", "just"}
)
"""Short unstressed words recognisers drop."""

COMPOUNDS: dict[tuple[str, str], str] = {
    ("phone", "box"): "phonebox",
    ("street", "light"): "streetlight",
    ("street", "lights"): "streetlights",
    ("post", "box"): "postbox",
    ("book", "shop"): "bookshop",
    ("drug", "store"): "drugstore",
    ("letter", "box"): "letterbox",
    ("mail", "box"): "mailbox",
    ("flag", "stones"): "flagstones",
    ("bus", "shelter"): "bushelter",
    ("some", "one"): "someone",
    ("zebra", "crossing"): "zebracrossing",
    ("sun", "shades"): "sunshades",
    ("any", "way"): "anyway",
}
SPLITS: dict[str, str] = {v: f"{a} {b}" for (a, b), v in COMPOUNDS.items()} | {
    "streetlamp": "street lamp",
    "streetlamps": "street lamps",
    "bookstore": "book store",
    "payphone": "pay phone",
    "stoplight": "stop light",
    "crosswalk": "cross walk",
    "hedgerow": "hedge row",
    "blacktop": "black top",
    "cobblestones": "cobble stones",
    "sidewalk": "side walk",
    "stonework": "stone work",
    "brickwork": "brick work",
    "someone": "some one",
    "sunshades": "sun shades",
    "rightmost": "right most",
    "leftmost": "left most",
}

FILLERS = ("um", "uh", "erm", "hmm")
FILLER_SHARE = 0.15
"""Share of the errors that are an inserted filler rather than a wrong word."""


def asr_normalise(text: str) -> list[str]:
    """Words as an ASR transcript writes them: lowercase, no punctuation (apostrophes
    inside words stay), hyphenated words as separate words."""
    t = unicodedata.normalize("NFC", text.lower())
    t = t.replace("\u2019", "'").replace("&", " ")
    t = re.sub(r"[-/]", " ", t)
    t = re.sub(r"[^\w\s']", " ", t)
    words = [w.strip("'") for w in t.split()]
    return [w for w in words if w]


def asr_noise(text: str, rng: np.random.Generator, rate: float = 0.08) -> str:
    """``text`` as a speech recogniser might transcribe it, with about ``rate`` of the words
    wrong. Deterministic given ``rng``'s state; ``rate=0`` only normalises.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    words = asr_normalise(text)
    if not words:
        return ""
    # Draw how many words go wrong, then put the errors on words a recogniser actually
    # confuses (per-word coin flips would waste most errors on words with no confusion).
    n_errors = int(rng.binomial(len(words), rate))
    ops_at = [_ops(words, i) for i in range(len(words))]
    eligible = [i for i, ops in enumerate(ops_at) if ops]
    n_fillers = int(rng.binomial(n_errors, FILLER_SHARE))
    n_subs = min(n_errors - n_fillers, len(eligible))
    chosen = set(rng.choice(eligible, size=n_subs, replace=False).tolist()) if n_subs else set()
    fillers = set(rng.choice(len(words), size=n_fillers, replace=False).tolist())
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if i in fillers:
            out.append(FILLERS[int(rng.integers(len(FILLERS)))])
        if i not in chosen:
            out.append(w)
            i += 1
            continue
        ops = ops_at[i]
        weights = np.array([p for _, p in ops])
        op = ops[int(rng.choice(len(ops), p=weights / weights.sum()))][0]
        if op == "homophone":
            alts = HOMOPHONES[w]
            out.extend(alts[int(rng.integers(len(alts)))].split())
        elif op == "number":
            out.append(NUMBERS.get(w) or DIGITS[w])
        elif op == "merge":
            out.append(COMPOUNDS[(w, words[i + 1])])
            i += 1
        elif op == "split":
            out.extend(SPLITS[w].split())
        elif op == "singular":
            out.append(w[:-1])
        # "drop" appends nothing.
        i += 1
    return " ".join(out)


def _ops(words: list[str], i: int) -> list[tuple[str, float]]:
    """The recogniser errors possible on ``words[i]``, with relative weights."""
    w = words[i]
    nxt = words[i + 1] if i + 1 < len(words) else None
    ops: list[tuple[str, float]] = []
    if w in HOMOPHONES:
        ops.append(("homophone", 4.0))
    if w in NUMBERS or w in DIGITS:
        ops.append(("number", 4.0))
    if nxt is not None and (w, nxt) in COMPOUNDS:
        ops.append(("merge", 3.0))
    if w in SPLITS:
        ops.append(("split", 3.0))
    if w in FUNCTION_WORDS:
        ops.append(("drop", 2.0))
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "'s")):
        ops.append(("singular", 1.0))
    return ops
