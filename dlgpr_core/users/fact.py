"""Simulated user: answers from one place's structured facts, truthfully and briefly.

Structured questions (those the built-in questioners ask) are answered exactly through
`PlaceKnowledge`; free text (an LLM questioner's) goes through the conservative keyword
parser first, and whatever it cannot parse with confidence gets "I don't know." rather than
a guess, because a wrong answer would poison both the benchmark and the GRPO reward.
"""

from __future__ import annotations

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.answers import DONT_KNOW
from dlgpr_core.dialogue.parse import parse_question
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.users.knowledge import PlaceKnowledge
from dlgpr_core.users.lexicon import USER_LEXICON


class FactUser:
    """Answers questions about `place` from its annotation facts only."""

    def __init__(self, place: PlaceAnnotation) -> None:
        self.place = place
        self.knowledge = PlaceKnowledge.from_place(place)

    def answer(self, question: Question | str) -> str:
        """A short sentence fit to append to the retrieval query, or "I don't know."."""
        if isinstance(question, Question) and question.kind != "free":
            return self.knowledge.answer(question)
        text = question.text if isinstance(question, Question) else question
        parsed = parse_question(text, USER_LEXICON)
        if parsed is None:
            return DONT_KNOW
        # A negated wording ("Isn't the bank red?") gets the bare statement: a "Yes"/"No"
        # to it could be read either way, the statement cannot.
        return self.knowledge.answer(parsed.question, yes_no_prefix=not parsed.negated)
