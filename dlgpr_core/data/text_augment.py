"""Training texts that are not the generator's full description alone.

An encoder trained only on the generator's descriptions learns their template: the order,
the length, the wording of every sentence. What a retriever reads in use is different: a
person recalls a few things in any order, a dialogue appends short answers ("The bank is
red.", "No, there is no bench.") to a vague caption, and a speech transcript has neither
capitals nor punctuation. This module turns one place's annotation into such texts:

* ``drop``: the description with each sentence kept with probability ``keep_prob``;
* ``shuffle``: the description's sentences in a random order;
* ``partial``: 1 to ``partial_max`` of its sentences (a partial recall), in a random order;
* ``caption``: the place's vague caption;
* ``answers``: 1 to ``answers_max`` short true statements about the place's elements;
* ``negations``: 1 to ``negations_max`` true negative statements (an element category the
  place lacks, or a wrong colour/material/door of a building it has one of);
* ``dialogue``: the caption (or a partial recall) followed by answers, negations and now and
  then "I don't know.", as a dialogue appends them;

and, on top of any of them with probability ``spoken_prob``, ``spoken``: lower case with the
punctuation removed, the form of a speech transcript.

Every statement is built from the annotation's structured elements with this module's own
short templates; nothing here comes from the evaluation-only rephraser
(`dlgpr_core.synth.rephrase`), which must never shape training. The negatives need the
categories and values a place could have had: `AugmentVocabulary.from_places` collects them
from the training places themselves. All draws come from a generator seeded by (seed,
place), so the texts of a place are the same in every run with the same seed.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .annotations import Element, PlaceAnnotation

Transformation = Literal[
    "drop", "shuffle", "partial", "caption", "answers", "negations", "dialogue"
]
TRANSFORMATIONS: tuple[Transformation, ...] = (
    "drop",
    "shuffle",
    "partial",
    "caption",
    "answers",
    "negations",
    "dialogue",
)
DONT_KNOW = "I don't know."

# After ., ! or ?, but not after the abbreviations of sign names ("St. Peter's").
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!St\.)(?<!Dr\.)(?<!Mr\.)(?<!Ms\.)\s+")
_PUNCTUATION = re.compile(r"[^\w\s'-]+")
_COUNT = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_BUILDING_ATTRS = ("colour", "material", "floors", "awning", "roof", "door", "name")


class TextAugmentConfig(BaseModel):
    """How many texts per place and how they are drawn (a YAML block of a training config)."""

    model_config = ConfigDict(extra="forbid")

    variants_per_place: int = Field(default=8, ge=0)
    # Relative frequency of each transformation; zero switches one off.
    weights: dict[Transformation, float] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "drop": 1.0,
            "shuffle": 1.0,
            "partial": 1.5,
            "caption": 0.5,
            "answers": 1.0,
            "negations": 0.5,
            "dialogue": 1.5,
        }
    )
    keep_prob: float = Field(default=0.6, gt=0.0, le=1.0)
    partial_max: int = Field(default=4, ge=1)
    answers_max: int = Field(default=4, ge=1)
    negations_max: int = Field(default=2, ge=1)
    spoken_prob: float = Field(default=0.25, ge=0.0, le=1.0)
    dont_know_prob: float = Field(default=0.2, ge=0.0, le=1.0)


@dataclass(frozen=True)
class AugmentedText:
    """One training text and how it was made."""

    transformation: Transformation
    text: str
    spoken: bool = False


@dataclass
class AugmentVocabulary:
    """What places of a city can have, so a negative names something real but absent."""

    categories: list[str] = field(default_factory=list)
    building_values: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_places(cls, places: Iterable[PlaceAnnotation]) -> AugmentVocabulary:
        categories: set[str] = set()
        values: dict[str, set[str]] = {}
        for place in places:
            for e in place.elements:
                if e.kind != "street":
                    categories.add(e.category)
                if e.kind == "building":
                    for attr in ("colour", "material", "door"):
                        if attr in e.attributes:
                            values.setdefault(attr, set()).add(e.attributes[attr])
        return cls(sorted(categories), {k: sorted(v) for k, v in sorted(values.items())})


def sentences(text: str) -> list[str]:
    """The sentences of a description (split after ., ! or ?)."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


def spoken_form(text: str) -> str:
    """Lower case, punctuation removed, one line: what a speech transcript looks like."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def element_statements(e: Element) -> list[str]:
    """Short true statements about one element (each one sentence)."""
    a, cat = e.attributes, e.category
    out: list[str] = []
    if e.kind == "building":
        if a.get("colour"):
            out.append(f"The {cat} is {a['colour']}.")
        if a.get("material"):
            out.append(f"The {cat} is made of {a['material']}.")
        if a.get("floors", "").isdigit():
            n = int(a["floors"])
            out.append(f"The {cat} has {_COUNT.get(n, str(n))} floor{'s' if n > 1 else ''}.")
        if a.get("awning"):
            awning = a["awning"]
            out.append(
                f"The {cat} has no awnings."
                if awning == "none"
                else f"The {cat} has {awning} awnings."
            )
        if a.get("roof"):
            out.append(f"The {cat} has {_article(a['roof'])} roof.")
        if a.get("door"):
            out.append(f"The {cat} has {_article(a['door'])} door.")
        if a.get("name"):
            out.append(f'The sign says "{a["name"]}".')
        out.append(f"There is {_article(cat)}.")
    elif e.kind == "street":
        if a.get("width"):
            out.append(f"The street is {a['width']}.")
        if a.get("pavement"):
            out.append(f"The pavement is {a['pavement']}.")
    else:
        colour = a.get("colour")
        size, species = a.get("size"), a.get("species")
        if species:
            out.append(f"There is {_article(' '.join(x for x in (size, species) if x))}.")
        elif colour:
            out.append(f"There is {_article(f'{colour} {cat}')}.")
        out.append(f"Yes, there is {_article(cat)}.")
    return out


class TextAugmenter:
    """Draws the training texts of a place; see the module docstring."""

    def __init__(self, config: TextAugmentConfig, vocabulary: AugmentVocabulary) -> None:
        self.config = config
        self.vocabulary = vocabulary
        names = [t for t in TRANSFORMATIONS if config.weights.get(t, 0.0) > 0]
        if config.variants_per_place and not names:
            raise ValueError("every transformation weight is zero: nothing to draw")
        w = np.array([config.weights[t] for t in names], dtype=np.float64)
        self._names = names
        self._probs = w / w.sum() if len(w) else w

    @classmethod
    def from_places(
        cls, places: Sequence[PlaceAnnotation], config: TextAugmentConfig | None = None
    ) -> TextAugmenter:
        return cls(config or TextAugmentConfig(), AugmentVocabulary.from_places(places))

    @staticmethod
    def rng(place: PlaceAnnotation, seed: int) -> np.random.Generator:
        """The generator of one place's texts: seeded by (seed, city, place id) only."""
        key = zlib.crc32(f"{place.city}:{place.place_id}".encode())
        return np.random.default_rng([seed, key])

    def variants(self, place: PlaceAnnotation, seed: int) -> list[AugmentedText]:
        """`variants_per_place` texts of `place`, deterministic in (seed, place)."""
        rng = self.rng(place, seed)
        out = []
        for _ in range(self.config.variants_per_place):
            name = self._names[int(rng.choice(len(self._names), p=self._probs))]
            out.append(self.make(name, place, rng))
        return out

    def make(
        self, name: Transformation, place: PlaceAnnotation, rng: np.random.Generator
    ) -> AugmentedText:
        """One text by transformation `name` (then maybe in spoken form)."""
        text = getattr(self, f"_{name}")(place, rng)
        if rng.random() < self.config.spoken_prob:
            return AugmentedText(name, spoken_form(text), spoken=True)
        return AugmentedText(name, text)

    # -- transformations ---------------------------------------------------------------------

    def _drop(self, place: PlaceAnnotation, rng: np.random.Generator) -> str:
        sents = sentences(place.description)
        keep = [s for s in sents if rng.random() < self.config.keep_prob]
        if len(keep) == len(sents) and len(sents) > 1:  # a "drop" always drops something
            keep.pop(int(rng.integers(len(keep))))
        return " ".join(keep or [sents[int(rng.integers(len(sents)))]])

    def _shuffle(self, place: PlaceAnnotation, rng: np.random.Generator) -> str:
        sents = sentences(place.description)
        return " ".join(sents[i] for i in rng.permutation(len(sents)))

    def _partial(self, place: PlaceAnnotation, rng: np.random.Generator) -> str:
        sents = sentences(place.description)
        k = int(rng.integers(1, min(self.config.partial_max, len(sents)) + 1))
        return " ".join(sents[i] for i in rng.choice(len(sents), k, replace=False))

    def _caption(self, place: PlaceAnnotation, rng: np.random.Generator) -> str:
        return place.caption

    def _true_statements(self, place: PlaceAnnotation) -> list[str]:
        return [s for e in place.elements for s in element_statements(e)]

    def _answers(self, place: PlaceAnnotation, rng: np.random.Generator, k: int = 0) -> str:
        pool = self._true_statements(place)
        k = k or int(rng.integers(1, self.config.answers_max + 1))
        return " ".join(pool[i] for i in rng.choice(len(pool), min(k, len(pool)), replace=False))

    def negation_pool(self, place: PlaceAnnotation) -> list[str]:
        """True negative statements: absent categories, wrong building attributes."""
        present = {e.category for e in place.elements}
        out = [
            f"No, there is no {c}." if i % 2 == 0 else f"There is no {c}."
            for i, c in enumerate(c for c in self.vocabulary.categories if c not in present)
        ]
        buildings = [e.category for e in place.elements if e.kind == "building"]
        for e in place.elements:
            # "The cafe is not red" is only true when the place has one cafe.
            if e.kind != "building" or buildings.count(e.category) > 1:
                continue
            for attr in ("colour", "material", "door"):
                have = e.attributes.get(attr)
                for v in self.vocabulary.building_values.get(attr, []):
                    if have is None or v == have:
                        continue
                    if attr == "door":
                        out.append(f"The {e.category} does not have {_article(v)} door.")
                    elif attr == "material":
                        out.append(f"No, the {e.category} is not made of {v}.")
                    else:
                        out.append(f"No, the {e.category} is not {v}.")
        return out

    def _negations(self, place: PlaceAnnotation, rng: np.random.Generator, k: int = 0) -> str:
        pool = self.negation_pool(place)
        if not pool:
            return self._answers(place, rng)
        k = k or int(rng.integers(1, self.config.negations_max + 1))
        return " ".join(pool[i] for i in rng.choice(len(pool), min(k, len(pool)), replace=False))

    def _dialogue(self, place: PlaceAnnotation, rng: np.random.Generator) -> str:
        start = place.caption if rng.random() < 0.7 else self._partial(place, rng)
        parts = [start]
        for _ in range(int(rng.integers(1, 6))):
            r = rng.random()
            if r < self.config.dont_know_prob:
                parts.append(DONT_KNOW)
            elif r < 0.7:
                parts.append(self._answers(place, rng, k=1))
            else:
                parts.append(self._negations(place, rng, k=1))
        return " ".join(_capital(p) for p in parts)
