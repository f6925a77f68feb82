"""Re-describe a place in words and sentence shapes the SynthCities generator never uses.

The text is built from the place's structured layers (elements, facts, relations, slots),
never from the generator's description, so nothing of its phrasing can leak through.
Every clause states a fact the place has (or a position read off its slots): an
evaluation query with an invented fact would blame the retriever for the query's error.

Styles:

- ``spoken``: first person, rambling, fillers and hedges, like a user talking to a robot;
- ``written``: the same content in plain sentences, no fillers;
- ``partial``: spoken, but only a random 50-80 % of the facts, like a half-remembered place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlgpr_core.data.annotations import Element, PlaceAnnotation
from dlgpr_core.synth.rephrase import lexicon as lx

STYLES = ("spoken", "written", "partial")

PARTIAL_RANGE = (0.5, 0.8)
"""Fraction of the place's facts a ``partial`` description keeps."""

NAME_MANGLE_P = 0.3
"""Chance that a sign name is misremembered slightly (users misread and misspell signs)."""


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _an(phrase: str) -> str:
    """Indefinite article for a phrase ("an eatery", "a one-story bank")."""
    word = phrase.split(" ", 1)[0].lower()
    vowel = word[:1] in "aeiou" and not word.startswith(("one", "uni", "eu"))
    return f"{'an' if vowel else 'a'} {phrase}"


def _num(n: str | int) -> str:
    return lx.NUMBER_WORDS.get(int(n), str(n))


# --- sign names ------------------------------------------------------------------------------


def _mangle_ops(name: str) -> list[str]:
    """Plausible misreadings of a sign: spelling by ear, dropped articles and words, split
    words, singular/plural slips, a word order swap."""
    out: list[str] = []
    words = name.split()
    if re.search(r"c(?=[aou])", name):
        out.append(re.sub(r"c(?=[aou])", "k", name, count=1))
    if "ph" in name.lower():
        out.append(name.replace("ph", "f").replace("Ph", "F"))
    if "'s" in name:
        out += [name.replace("'s", "s"), name.replace("'s", "")]
    if name.startswith("The "):
        out.append(name[4:])
    if name.startswith("St. "):
        out += ["Saint " + name[4:], "St " + name[4:]]
    if " and " in name:
        out.append(name.replace(" and ", " & "))
    camel = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    if camel != name:
        out.append(camel)
    spelling = {"Petit": "Petite", "Harbor": "Harbour", "Cafe": "Café", "One": "1", "Depot": "Depo"}
    for old, new in spelling.items():
        if old in words:
            out.append(" ".join(new if w == old else w for w in words))
    if len(words) == 2 and words[0] == "Hotel":
        out.append(f"{words[1]} Hotel")
    if len(words) >= 3 and "and" not in words and not name.startswith(("The ", "St. ")):
        out.append(" ".join(words[1:]))
    last = words[-1]
    if last.isalpha() and len(last) > 3 and not name.startswith("St. "):
        plural = last[:-1] if last.endswith("s") and not last.endswith("ss") else last + "s"
        out.append(" ".join([*words[:-1], plural]))
    return [o for o in dict.fromkeys(out) if o != name]


def mangle_name(name: str, rng: np.random.Generator) -> str:
    """A slightly wrong but recognisable version of ``name`` ("Apotheca" -> "Apotheka")."""
    ops = _mangle_ops(name)
    return _choice(rng, ops) if ops else name


# --- the place as the rephraser sees it ------------------------------------------------------


@dataclass
class _Thing:
    el: Element
    facts: dict[str, str] = field(default_factory=dict)
    """Stated attribute -> value (only the facts this description keeps)."""
    head: str = ""
    """The noun picked for this element; reused so one text names it consistently."""


def _things(place: PlaceAnnotation, rng: np.random.Generator, partial: bool) -> dict[str, _Thing]:
    by_id = {e.id: _Thing(e) for e in place.elements}
    facts = [f for f in place.facts if f.attribute != "category" and f.element_id in by_id]
    keep = np.ones(len(facts), dtype=bool)
    if partial and facts:
        frac = rng.uniform(*PARTIAL_RANGE)
        k = max(1, round(frac * len(facts)))
        # People remember the signs they read better than door colours.
        w = np.array([3.0 if f.attribute == "name" else 1.0 for f in facts])
        keep[:] = False
        keep[rng.choice(len(facts), size=k, replace=False, p=w / w.sum())] = True
    for f, kept in zip(facts, keep, strict=True):
        if kept:
            by_id[f.element_id].facts[f.attribute] = f.value
    for t in by_id.values():
        cat = t.el.category
        if cat == "tree" and "species" in t.facts:
            t.head = _choice(rng, lx.SPECIES_SYNONYMS.get(t.facts["species"], ("tree",)))
            if not t.head.endswith("tree") and rng.random() < 0.5:
                t.head += " tree"
        elif cat in lx.CATEGORY_SYNONYMS:
            t.head = _choice(rng, lx.CATEGORY_SYNONYMS[cat])
    # An element is mentioned when one of its facts is kept; in full styles that is all.
    return {k: t for k, t in by_id.items() if t.facts}


# --- phrases ---------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, value: str) -> str:
    return _choice(rng, lx.COLOUR_SYNONYMS.get(value, (value,)))


def _floors_adj(rng: np.random.Generator, n: str) -> str:
    if n == "1":
        return _choice(rng, ("one-story", "single-level", "low one-floor"))
    return f"{_num(n)}-{_choice(rng, ('story', 'floor'))}"


def _floors_pred(rng: np.random.Generator, n: str) -> str:
    if n == "1":
        return _choice(rng, ("it's just one floor", "it's only a single level", "it's one-story"))
    w = _num(n)
    return _choice(
        rng, (f"it's {w} floors high", f"it's got {w} levels", f"{w} floors", f"it's {w} stories")
    )


def _material_adj(rng: np.random.Generator, m: str) -> str:
    return _choice(rng, lx.MATERIAL_SYNONYMS.get(m, (m,)))


def _material_noun(rng: np.random.Generator, m: str) -> str:
    nouns = {
        "brick": ("brick", "brickwork"),
        "stone": ("stone", "stonework"),
        "glass": ("glass",),
        "stucco": ("plaster", "painted plaster"),
        "wood": ("wood", "timber"),
    }
    return _choice(rng, nouns.get(m, (m,)))


def _walls_pred(rng: np.random.Generator, f: dict[str, str]) -> str | None:
    c, m = f.get("colour"), f.get("material")
    if c and m:
        col, mat = _colour(rng, c), _material_noun(rng, m)
        return _choice(
            rng, (f"it's {col} {mat}", f"the walls are {col} {mat}", f"the front's all {col} {mat}")
        )
    if c:
        col = _colour(rng, c)
        return _choice(rng, (f"it's {col}", f"the walls are {col}"))
    if m:
        mat = _material_noun(rng, m)
        return _choice(rng, (f"it's made of {mat}", f"all {mat}"))
    return None


def _awning_pred(rng: np.random.Generator, v: str) -> str:
    if v == "none":
        return _choice(rng, ("no canopy over the windows", "there's no shade over the shop front"))
    c = _colour(rng, v)
    return _choice(
        rng,
        (
            f"it's got {c} canopies",
            f"there's {c} sunshades over the windows",
            f"with {c} canopies out front",
            f"{c} shades over the shop window",
        ),
    )


def _roof_pred(rng: np.random.Generator, v: str) -> str:
    if "steeple" in v:
        return _choice(rng, ("it has a spire", "there's a tall spire on top", "a pointy spire"))
    if v == "flat":
        return _choice(rng, ("the roof's flat", "flat on top", "it's flat-topped"))
    return _choice(rng, ("the roof's pointy", "a peaked roof", "the roof slopes up to a point"))


def _door_pred(rng: np.random.Generator, v: str) -> str:
    c = _colour(rng, v)
    return _choice(rng, (f"the door's {c}", f"{_an(c)} door", f"the entrance door was {c}"))


def _sign(rng: np.random.Generator, name: str) -> str:
    shown = mangle_name(name, rng) if rng.random() < NAME_MANGLE_P else name
    return f'"{shown}"'


# --- buildings -------------------------------------------------------------------------------


@dataclass
class _Ctx:
    rng: np.random.Generator
    spoken: bool

    def filler(self, p: float = 0.3) -> str:
        """A spoken-style opener for the next clause (empty in written style)."""
        if not self.spoken or self.rng.random() >= p:
            return ""
        return _choice(self.rng, ("um ", "uh ", "so ", "and um ", "like ", "I think "))


def _building_intro(ctx: _Ctx, t: _Thing, where: str) -> tuple[str, list[str]]:
    """The sentence that introduces a building, and the attribute clauses left over."""
    rng, f = ctx.rng, t.facts
    adjs: list[str] = []
    rest: list[str] = []
    if "floors" in f:
        if rng.random() < 0.5:
            adjs.append(_floors_adj(rng, f["floors"]))
        else:
            rest.append(_floors_pred(rng, f["floors"]))
    if ("colour" in f or "material" in f) and rng.random() < 0.5:
        if "colour" in f:
            adjs.append(_colour(rng, f["colour"]))
        if "material" in f:
            adjs.append(_material_adj(rng, f["material"]))
    else:
        pred = _walls_pred(rng, f)
        if pred:
            rest.append(pred)
    if "awning" in f:
        rest.append(_awning_pred(rng, f["awning"]))
    if "roof" in f:
        rest.append(_roof_pred(rng, f["roof"]))
    if "door" in f:
        rest.append(_door_pred(rng, f["door"]))
    rng.shuffle(rest)

    np_ = " ".join([*adjs, t.head])
    det = "this" if ctx.spoken and rng.random() < 0.4 else None
    noun = f"{det} {np_}" if det else _an(np_)
    name = f.get("name")
    if name:
        sign = _sign(rng, name)
        variant = int(rng.integers(4))
        if variant == 0:
            intro = f"{where} there's {noun} named {sign}"
        elif variant == 1:
            intro = f"{where} there's {noun}, {sign} on the sign"
        elif variant == 2:
            intro = f"{where} you've got {sign}, it's {_an(np_)}"
        else:
            intro = f"{where} there's {noun} and the sign says {sign}"
    else:
        intro = f"{where} there's {noun}"
    return intro, rest


def _join_clauses(ctx: _Ctx, clauses: list[str]) -> list[str]:
    """Group leftover attribute clauses into one or two short sentences."""
    if not clauses:
        return []
    rng = ctx.rng
    out: list[str] = []
    i = 0
    while i < len(clauses):
        take = min(len(clauses) - i, int(rng.integers(1, 3)))
        chunk = clauses[i : i + take]
        i += take
        joiner = ", and " if ctx.spoken and rng.random() < 0.5 else " and "
        out.append(ctx.filler(0.25) + joiner.join(chunk))
    return out


# --- props -----------------------------------------------------------------------------------


def _prop_np(ctx: _Ctx, t: _Thing) -> str:
    """A noun phrase with article for a prop, stating exactly its kept facts."""
    rng, f, cat, head = ctx.rng, t.facts, t.el.category, t.head
    if cat == "lamp post":
        c = f"{_colour(rng, f['colour'])} " if "colour" in f else ""
        n = _num(f["count"]) if "count" in f else "some"
        return f"{n} {c}{head}s"
    if cat == "bench":
        parts = [_colour(rng, f["colour"])] if "colour" in f else []
        if "material" in f:
            parts.append("wood" if f["material"] == "wooden" else f["material"])
        return _an(" ".join([*parts, head]))
    if cat == "fountain":
        shapes = {"round": ("round", "circular"), "octagonal": ("eight-sided", "octagonal")}
        shape = _choice(rng, shapes.get(f.get("shape", ""), ("",)))
        return _an(f"{shape} {head}".strip())
    if cat == "statue":
        mats = {"bronze": ("bronze",), "white marble": ("white marble", "marble")}
        subjects = {
            "a horse rider": ("someone on a horse", "a rider on horseback"),
            "a standing figure": ("a standing figure", "a figure standing up"),
        }
        mat = _choice(rng, mats.get(f.get("material", ""), ("",)))
        base = _an(f"{mat} {head}".strip())
        if "subject" in f:
            base += f" of {_choice(rng, subjects.get(f['subject'], (f['subject'],)))}"
        return base
    if cat == "tree":
        sizes = {"small": ("small", "little", "smallish"), "tall": ("tall", "big tall", "high")}
        size = _choice(rng, sizes.get(f.get("size", ""), ("",)))
        return _an(f"{size} {head}".strip())
    if cat == "hedge":
        heights = {"low": ("low", "short"), "tall": ("tall", "high")}
        h = _choice(rng, heights.get(f.get("height", ""), ("",)))
        phrase = f"{h} {head}".strip()
        return f"some {phrase}" if head == "bushes" else _an(phrase)
    if cat == "crosswalk":
        style = f.get("style", "")
        stripes = "white" if "white" in style else "yellow" if "yellow" in style else ""
        if stripes and rng.random() < 0.5:
            return f"{_an(head)} with {stripes} stripes"
        return _an(f"{stripes} striped {head}" if stripes else head)
    c = f"{_colour(rng, f['colour'])} " if "colour" in f else ""
    return _an(f"{c}{head}")


def _prop_location(ctx: _Ctx, t: _Thing, rel: tuple[str, str] | None, anchor: str) -> str:
    rng, cat = ctx.rng, t.el.category
    if rel is None:
        if cat == "lamp post":
            return _choice(rng, ("along the far sidewalk", "on the other side of the road"))
        return ""
    kind, _ = rel
    if kind == "across_from":
        return _choice(
            rng,
            (
                f"on my side of the street, opposite the {anchor}",
                f"on this side of the road, facing the {anchor}",
                f"over on my side, across from the {anchor}",
            ),
        )
    if cat == "crosswalk":
        return _choice(
            rng, (f"over the road by the {anchor}", f"across the street at the {anchor}")
        )
    if cat == "hedge":
        return _choice(rng, (f"along the {anchor}", f"lining the {anchor}"))
    return _choice(rng, (f"outside the {anchor}", f"by the {anchor}", f"right by the {anchor}"))


def _prop_sentence(ctx: _Ctx, t: _Thing, rel: tuple[str, str] | None, anchor: str) -> str:
    rng = ctx.rng
    np_ = _prop_np(ctx, t)
    loc = _prop_location(ctx, t, rel, anchor)
    plural = t.el.category in ("lamp post",) or np_.startswith("some ")
    be = "there are" if plural else "there's"
    if not loc:
        return f"{be} {np_}"
    variant = int(rng.integers(3))
    if variant == 0:
        return f"{loc} {be} {np_}"
    if variant == 1:
        return f"{be} {np_} {loc}"
    return f"{'oh and ' if ctx.spoken else 'also '}{np_}, {loc}"


# --- street ----------------------------------------------------------------------------------


def _street_sentences(ctx: _Ctx, f: dict[str, str]) -> list[str]:
    rng = ctx.rng
    out: list[str] = []
    if "width" in f or "buildings" in f:
        w = _choice(rng, lx.WIDTH_SYNONYMS.get(f.get("width", ""), ("",)))
        n = _num(f["buildings"]) if "buildings" in f else ""
        if w and n:
            out.append(
                _choice(
                    rng,
                    (
                        f"I'm on a {w} road looking at {n} buildings on the other side",
                        f"the road's {w} and there's {n} buildings opposite me",
                        f"{n} buildings across a {w} road",
                    ),
                )
            )
        elif w:
            out.append(_choice(rng, (f"the road's {w}", f"it's a {w} road")))
        else:
            out.append(
                _choice(rng, (f"there's {n} buildings opposite", f"{n} buildings in a line"))
            )
    if "pavement" in f:
        p = _choice(rng, lx.PAVEMENT_SYNONYMS.get(f["pavement"], (f["pavement"],)))
        out.append(
            _choice(
                rng,
                (f"the sidewalk's {p}", f"{p} on the sidewalks", f"the footpath is {p}"),
            )
        )
    return out


# --- assembly --------------------------------------------------------------------------------


def _positions(ctx: _Ctx, order: list[int], n_total: int, mode: str, pivot_head: str) -> list[str]:
    """A truthful place-in-the-row phrase for each building of a walk over slot indices.

    "Next to" is only said of buildings that are neighbours in the full row, so a
    partial description that skips a building says "further along" instead.
    """
    rng = ctx.rng
    out: list[str] = []
    for k, idx in enumerate(order):
        if k == 0:
            if mode == "pivot":
                out.append(_choice(rng, ("the one I remember best,", "what stuck with me is,")))
            elif mode == "ltr":
                out.append(
                    _choice(rng, ("on the far left", "leftmost", "starting from the left,"))
                    if idx == 0
                    else "towards the left"
                )
            else:
                out.append(
                    _choice(rng, ("on the far right", "rightmost", "starting from the right,"))
                    if idx == n_total - 1
                    else "towards the right"
                )
            continue
        prev = order[k - 1]
        if mode == "pivot" and idx > order[0] > prev:
            # The walk jumps back past the pivot to its right-hand side.
            if idx == order[0] + 1:
                out.append(f"and on the other side of the {pivot_head}, to its right,")
            else:
                out.append(f"and further right of the {pivot_head}")
            continue
        side = "right" if idx > prev else "left"
        if abs(idx - prev) == 1:
            end = idx in (0, n_total - 1) and rng.random() < 0.4
            out.append(
                f"and at the {side} end"
                if end
                else _choice(
                    rng,
                    (f"then to the {side} of that", f"next to it on the {side}", f"{side} of that"),
                )
            )
        else:
            out.append(_choice(rng, (f"a bit further {side}", f"further to the {side}")))
    return out


def rephrase_place(place: PlaceAnnotation, rng: np.random.Generator, style: str = "spoken") -> str:
    """A new description of ``place`` in the evaluation vocabulary (see module docstring).

    Deterministic given ``rng``'s state; built only from elements, facts and slots.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    ctx = _Ctx(rng, spoken=style != "written")
    things = _things(place, rng, partial=style == "partial")
    all_buildings = sorted(
        (e for e in place.elements if e.kind == "building"), key=lambda e: (e.slot or 0, e.id)
    )
    slot_index = {e.id: i for i, e in enumerate(all_buildings)}
    buildings = [things[e.id] for e in all_buildings if e.id in things]
    heads_by_id = {e.id: things[e.id].head if e.id in things else "" for e in all_buildings}
    for e in all_buildings:
        if not heads_by_id[e.id]:
            heads_by_id[e.id] = _choice(rng, lx.CATEGORY_SYNONYMS.get(e.category, (e.category,)))

    anchors: dict[str, tuple[str, str]] = {}
    for r in place.relations:
        if r.subject_id in things and r.object_id in slot_index and r.subject_id not in slot_index:
            anchors.setdefault(r.subject_id, (r.relation, r.object_id))
    props = [t for t in things.values() if t.el.kind not in ("building", "street")]
    props.sort(key=lambda t: (t.el.side or "", t.el.slot or 0, t.el.id))
    inline: dict[str, list[_Thing]] = {}
    trailing: list[_Thing] = []
    for t in props:
        rel = anchors.get(t.el.id)
        # Inline ("outside it") only right after its anchor, so only if the anchor is said.
        if rel is not None and rel[0] == "next_to" and rel[1] in things and rng.random() < 0.5:
            inline.setdefault(rel[1], []).append(t)
        else:
            trailing.append(t)
    rng.shuffle(trailing)

    mode = _choice(rng, ("ltr", "rtl", "pivot")) if len(buildings) > 2 else "ltr"
    idx = [slot_index[t.el.id] for t in buildings]
    if mode == "rtl":
        idx = idx[::-1]
    elif mode == "pivot":
        p = idx[int(rng.integers(len(idx)))]
        idx = [p] + sorted((i for i in idx if i < p), reverse=True) + [i for i in idx if i > p]
    order = [things[all_buildings[i].id] for i in idx]
    wheres = _positions(ctx, idx, len(all_buildings), mode, order[0].head if order else "")

    sentences: list[str] = []
    for k, (t, where) in enumerate(zip(order, wheres, strict=True)):
        intro, rest = _building_intro(ctx, t, where)
        # No filler in front of the opener or of an "and ..." continuation ("um and um").
        lead = ctx.filler() if k > 0 and not where.startswith("and ") else ""
        sentences.append(lead + intro)
        sentences += _join_clauses(ctx, rest)
        for prop in inline.get(t.el.id, []):
            np_ = _prop_np(ctx, prop)
            be = "there are" if np_.startswith("some ") else "there's"
            if prop.el.category == "hedge":
                loc = _choice(ctx.rng, ("lining the front of it", "along it"))
            else:
                loc = _choice(ctx.rng, ("outside it", "right in front of it", "just outside"))
            sentences.append(ctx.filler(0.2) + f"{loc} {be} {np_}")
    for t in trailing:
        rel = anchors.get(t.el.id)
        anchor = heads_by_id.get(rel[1], "") if rel else ""
        said = _prop_sentence(ctx, t, rel, anchor)
        sentences.append(said if said.startswith("oh and") else ctx.filler(0.3) + said)

    street = next((t for t in things.values() if t.el.kind == "street"), None)
    if street is not None:
        street_sents = _street_sentences(ctx, street.facts)
        if street_sents and rng.random() < 0.5:
            sentences = street_sents[:1] + sentences + street_sents[1:]
        else:
            sentences += street_sents

    if ctx.spoken:
        opener = _choice(rng, ("so", "okay so", "um so", "right so", ""))
        if style == "partial":
            opener = _choice(rng, ("I only remember bits of it, but", "I don't remember much,"))
        if opener and sentences:
            sentences[0] = f"{opener} {sentences[0]}"
        closer = _choice(rng, ("that's about it", "I think that's everything", "", ""))
        if style == "partial":
            closer = _choice(rng, ("not sure about the rest", "that's all I can remember"))
        if closer:
            sentences.append(closer)
    return " ".join(_sentence_case(s) for s in sentences if s)


def _sentence_case(s: str) -> str:
    s = s.strip().rstrip(",")
    return s[:1].upper() + s[1:] + ("" if s.endswith((".", "?", "!")) else ".")
