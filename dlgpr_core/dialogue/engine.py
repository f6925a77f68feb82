"""The dialogue loop run synchronously: retrieve, ask, append the answer, retrieve again.

`DialogueEngine` drives `DialogueSession`s (which hold every rule of the dialogue) by
calling the search and the questioner itself, so evaluation, training-data generation and
benchmarks run exactly the dialogue the ROS graph runs over topics. Every round's state is
returned (candidates, belief, history); `run` is the whole simulated loop with a user.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dlgpr_core.dialogue.questioner import Questioner
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.session import (
    Answered,
    Asked,
    DialogueSession,
    Ranked,
    RequestRetrieval,
    Reranker,
    first,
)
from dlgpr_core.dialogue.state import AWAITING_QUESTION, DialogueConfig, DialogueState
from dlgpr_core.mapdb.report import PlaceHit

if TYPE_CHECKING:
    from dlgpr_core.encoders.base import Encoder
    from dlgpr_core.mapdb.database import MapDatabase

SearchFn = Callable[[str, int], list[PlaceHit]]
"""search(text, k) -> the top-k places, best first."""

_ids = itertools.count()


def map_search(map_db: MapDatabase, encoder: Encoder) -> SearchFn:
    """The engine's search callable over a map (exact search, fine re-ranking if any)."""

    def search(text: str, k: int) -> list[PlaceHit]:
        return map_db.search(text, encoder, k=k)

    return search


class User(Protocol):
    """Anything that answers a question (the simulated `FactUser`, a person, an LLM)."""

    def answer(self, question: Question | str) -> str:
        """A short answer sentence."""
        ...


@dataclass
class DialogueResult:
    """One finished dialogue: every round's state and, given a target, its ranks."""

    dialogue_id: str
    states: list[DialogueState]
    target_place_id: str | None = None
    ranks: list[int] = field(default_factory=list)
    """0-indexed rank of the target per round (rounds 0..len(states)-1)."""

    @property
    def final(self) -> DialogueState:
        """The last state."""
        return self.states[-1]

    def padded_ranks(self, n_rounds: int) -> list[int]:
        """Ranks for rounds 0..n_rounds-1; an early-stopped dialogue keeps its last rank,
        since its query no longer changes."""
        if not self.ranks:
            raise ValueError("this dialogue had no target, so it has no ranks")
        return (self.ranks + [self.ranks[-1]] * n_rounds)[:n_rounds]


class DialogueEngine:
    """Runs dialogues over a `search` callable and a questioner, one session each."""

    def __init__(
        self,
        search: SearchFn,
        questioner: Questioner,
        config: DialogueConfig | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        self.search = search
        self.questioner = questioner
        self.config = config or DialogueConfig()
        self.reranker = reranker

    def _session(self, state: DialogueState) -> DialogueSession:
        return DialogueSession(state, self.config, self.reranker)

    def _retrieve(self, session: DialogueSession, request: RequestRetrieval | None) -> None:
        assert request is not None, "a session in this phase always requests a retrieval"
        session.handle(Ranked(request.round, self.search(request.query, request.k)))

    def _ask_open(self, sessions: Sequence[DialogueSession]) -> list[DialogueState]:
        """Sessions awaiting a question get it, in ONE call when the questioner batches
        (`ask_many`, e.g. a VLM on a GPU); every session's resulting state, in order."""
        open_ = [s for s in sessions if s.phase == AWAITING_QUESTION]
        states = [s.state for s in open_]
        ask_many = getattr(self.questioner, "ask_many", None)
        if ask_many is not None and len(open_) > 1:
            asked = list(ask_many(states))
        else:
            asked = [self.questioner.ask(s) for s in states]
        for session, question in zip(open_, asked, strict=True):
            session.handle(Asked(session.state.round, question, self.questioner.name))
        return [s.state for s in sessions]

    def start(self, d0: str, dialogue_id: str | None = None) -> DialogueState:
        """Round 0: retrieve with d0 alone; the state carries the first question."""
        return self.start_many([d0], [dialogue_id])[0]

    def start_many(
        self, d0s: Sequence[str], dialogue_ids: Sequence[str | None] | None = None
    ) -> list[DialogueState]:
        """Round 0 of several dialogues, their first questions asked in one batch."""
        ids = list(dialogue_ids) if dialogue_ids is not None else [None] * len(d0s)
        if len(ids) != len(d0s):
            raise ValueError(f"{len(d0s)} descriptions but {len(ids)} dialogue ids")
        sessions = []
        for d0, did in zip(d0s, ids, strict=True):
            session, actions = DialogueSession.begin(
                did if did is not None else f"dlg-{next(_ids)}", d0, self.config, self.reranker
            )
            self._retrieve(session, first(actions, RequestRetrieval))
            sessions.append(session)
        return self._ask_open(sessions)

    def step(self, state: DialogueState, answer: str) -> DialogueState:
        """Record the answer to `state.pending_question`, re-retrieve, pick the next question."""
        return self.step_many([state], [answer])[0]

    def step_many(
        self, states: Sequence[DialogueState], answers: Sequence[str]
    ) -> list[DialogueState]:
        """`step` for several dialogues at once (lockstep), next questions asked in one batch."""
        if len(states) != len(answers):
            raise ValueError(f"{len(states)} dialogues but {len(answers)} answers")
        sessions = []
        for state, answer in zip(states, answers, strict=True):
            if state.done or state.pending_question is None:
                raise ValueError(f"dialogue {state.dialogue_id} is finished ({state.stop_reason})")
            session = self._session(state)
            actions = session.handle(Answered(answer))
            self._retrieve(session, first(actions, RequestRetrieval))
            sessions.append(session)
        return self._ask_open(sessions)

    def run(
        self,
        d0: str,
        user: User,
        target_place_id: str | None = None,
        dialogue_id: str | None = None,
    ) -> DialogueResult:
        """The whole simulated dialogue; with a target, its rank after every round."""
        state = self.start(d0, dialogue_id)
        states = [state]
        while not state.done and state.pending_question is not None:
            state = self.step(state, user.answer(state.pending_question))
            states.append(state)
        ranks = [s.rank_of(target_place_id) for s in states] if target_place_id else []
        return DialogueResult(state.dialogue_id, states, target_place_id, ranks)
