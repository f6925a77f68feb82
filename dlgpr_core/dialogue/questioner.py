"""What a questioner is: anything that picks the next question from a dialogue's state.

Kept apart from the questioners themselves so that the session, the engine and every
questioner (rule-based, DQ-pilot, PlugIR) depend on this small protocol, not on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.state import DialogueState


class Questioner(Protocol):
    """Picks the next question from the dialogue state; None when it has nothing to ask."""

    name: str

    def ask(self, state: DialogueState) -> Question | None:
        """The next question (never one whose probe was already asked)."""
        ...


class BatchQuestioner(Questioner, Protocol):
    """A questioner that asks for many dialogues in one call (a VLM on a GPU)."""

    def ask_many(self, states: Sequence[DialogueState]) -> list[Question | None]:
        """One question (or None) per state, in order."""
        ...
