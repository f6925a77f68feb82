"""A simulated user who talks like a person: truthful, but in other words, and maybe misheard.

The exact fact user answers in the generator's own sentences, which the robot reads easily.
People say "Yeah, it's kind of reddish", "nope, no phone box", "Union Saving, I think". This
user decides *what* to answer exactly as `FactUser` does (the same ground truth, so the
answer is never false), then words it with the evaluation-only vocabulary of
`dlgpr_core.synth.rephrase` (synonyms, pronouns, hedges, slightly misread sign names) and,
optionally, speech-recognition noise. The robot reads answers with its own lexicon, so how
often it fails to read them is a measurement (`dlgpr eval` counts the unread answers).
"""

from __future__ import annotations

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.parse import parse_question
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.synth.rephrase import asr_noise, mangle_name
from dlgpr_core.synth.rephrase.lexicon import (
    CATEGORY_SYNONYMS,
    COLOUR_SYNONYMS,
    MATERIAL_SYNONYMS,
    PAVEMENT_SYNONYMS,
    SPECIES_SYNONYMS,
    WIDTH_SYNONYMS,
)
from dlgpr_core.synth.vocabulary import COUNT_WORDS, FLOOR_WORDS
from dlgpr_core.users.fact import FactUser
from dlgpr_core.users.lexicon import USER_LEXICON

_DONT_KNOW = ("I don't know.", "Not sure, sorry.", "I didn't notice.", "No idea, really.")
_YES = ("Yes.", "Yeah.", "Yes, that's right.", "Yep.", "I think so, yes.")
_NO = ("No.", "Nope.", "No, I don't think so.")


class RephrasedUser:
    """Answers like `FactUser`, worded like a person (see the module docstring)."""

    def __init__(
        self, place: PlaceAnnotation, seed: int = 0, asr_rate: float = 0.0, misread: float = 0.2
    ) -> None:
        self.facts = FactUser(place)
        self.rng = np.random.default_rng(seed)
        self.asr_rate = asr_rate
        self.misread = misread

    def _pick(self, options: tuple[str, ...] | list[str]) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def _noun(self, category: str) -> str:
        return self._pick((*CATEGORY_SYNONYMS.get(category, ()), category))

    def _value(self, attribute: str, value: str) -> str:
        """A person's words for one value of an attribute."""
        tables = {
            "colour": COLOUR_SYNONYMS,
            "door": COLOUR_SYNONYMS,
            "awning": COLOUR_SYNONYMS,
            "material": MATERIAL_SYNONYMS,
            "pavement": PAVEMENT_SYNONYMS,
            "species": SPECIES_SYNONYMS,
            "width": WIDTH_SYNONYMS,
        }
        if attribute == "name":
            return mangle_name(value, self.rng) if self.rng.random() < self.misread else value
        if attribute == "floors" and value.isdigit():
            return self._pick((f"{COUNT_WORDS.get(int(value), value)} floors",
                               FLOOR_WORDS.get(int(value), value)))  # fmt: skip
        if attribute == "awning" and value == "none":
            return "no awnings"
        synonyms = tables.get(attribute, {}).get(value)
        return self._pick(synonyms) if synonyms else value

    def _statement(self, q: Question, value: str) -> str:
        attr = q.attribute or ""
        words = self._value(attr, value)
        noun = self._noun(q.category)
        if attr == "name":
            return self._pick((f'The sign says "{words}".', f"It's called {words}, I think.",
                               f"{words}."))  # fmt: skip
        if attr == "awning" and value != "none":
            return self._pick((f"It has {words} awnings.", f"The awnings are {words}."))
        if attr == "door":
            return self._pick((f"The door is {words}.", f"It has a {words} door."))
        if attr == "roof":
            return self._pick((f"The roof is {value}.", f"It's got a {value} roof."))
        if attr == "floors":
            return self._pick((f"It has {words}.", f"The {noun} is {words}."))
        return self._pick((f"It's {words}.", f"The {noun} is {words}.", f"{words}, I'd say."))

    def answer(self, question: Question | str) -> str:
        """A truthful answer in a person's words (and, with `asr_rate`, as misheard)."""
        exact = self.facts.answer(question)
        probe = question if isinstance(question, Question) and question.kind != "free" else None
        if probe is None:
            text = question.text if isinstance(question, Question) else question
            parsed = parse_question(text, USER_LEXICON)
            probe = parsed.question if parsed is not None and not parsed.negated else None
        said = self._word(probe, exact) if probe is not None else exact
        return asr_noise(said, self.rng, rate=self.asr_rate) if self.asr_rate > 0 else said

    def _word(self, q: Question, exact: str) -> str:
        outcome = self.facts.knowledge.outcome(q)
        tag, values = outcome[0], outcome[1:]
        if tag == "unknown":
            return self._pick(_DONT_KNOW)
        if tag == "present":
            return self._pick((*_YES, f"Yes, there's a {self._noun(q.category)}."))
        if tag == "absent":
            return self._pick((*_NO, f"No, there's no {self._noun(q.category)}."))
        if tag == "yes":
            return self._pick(_YES)
        statements = " ".join(self._statement(q, v) for v in values)
        if tag == "no":
            return f"{self._pick(('No.', 'Nope.'))} {statements}"
        return statements or exact
