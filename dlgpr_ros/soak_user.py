"""Many simulated people at once, for soak, flood and fault runs of the whole graph.

Each dialogue is about one place and its questions are answered from that place's
annotations, as `simulated_user_node` does (so this module, like that one, may read ground
truth and is outside the robot-side contract), but any number of dialogues about the same
place may run at once, and only their outcomes are kept: a run of thousands of dialogues
holds constant memory on the user's side, so what a memory measurement sees is the graph's.
`answer=False` plays a flood: descriptions whose questions nobody answers (or holds the
answers back until `answer_held`, to fault a peer while a dialogue waits).

Used by the load tests (tests/test_ros_load.py) and `benchmarks/bench_soak.py`.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.users.fact import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.msg import DialogueState
from dlgpr_ros.user_side import UserSide

STATUS_NAMES = {
    DialogueState.STATUS_CONFIDENT: "confident",
    DialogueState.STATUS_MAX_ROUNDS: "max_rounds",
    DialogueState.STATUS_FAILED: "failed",
    DialogueState.STATUS_CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class Outcome:
    """How one started dialogue ended, as its user saw it."""

    owner: str
    dialogue_id: str
    status: str
    """confident, max_rounds, failed, cancelled, or refused (no dialogue was started)."""
    detail: str
    questions: int
    seconds: float
    """Description sent to final state."""


class SoakUser(UserSide):
    """Starts dialogues about places, answers them (or not), keeps their outcomes."""

    def __init__(
        self,
        places: Mapping[str, PlaceAnnotation],
        node_name: str = "soak_user",
        *,
        answer: bool = True,
        keep_outcomes: int = 10_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, **kwargs)
        self.places = places
        self.answer = answer
        self._users: dict[str, FactUser] = {}
        self._serial = itertools.count(1)
        self._started_at: dict[str, float] = {}
        """Owner -> when its description was sent, until its dialogue ends or is refused."""
        self._held: dict[str, DialogueState] = {}
        """Owner -> the state whose question went unanswered while `answer` was False."""
        self.outcomes: deque[Outcome] = deque(maxlen=keep_outcomes)
        self.tally: Counter[str] = Counter()
        """Outcomes by status, and "questions" (questions received), "answers" (sent)."""
        self.reasons: Counter[str] = Counter()
        """Outcomes other than a localisation, by status and the start of their detail."""
        self.examples: dict[str, str] = {}
        """The first whole detail of each of `reasons`."""

    # -- starting ----------------------------------------------------------------------------

    def start(self, place_id: str, text: str | None = None) -> str:
        """Describes `place_id` (its caption, or `text`) in a new dialogue; returns the
        owner key."""
        owner = f"{place_id}#{next(self._serial)}"
        with self._lock:
            self._started_at[owner] = time.monotonic()
        self.start_dialogue(owner, self.places[place_id].caption.strip() if text is None else text)
        return owner

    @property
    def open(self) -> int:
        """Descriptions sent whose dialogue has not ended (nor been refused) yet."""
        with self._lock:
            return len(self._started_at)

    def ended(self) -> int:
        with self._lock:
            return sum(v for k, v in self.tally.items() if k not in ("questions", "answers"))

    # -- following ---------------------------------------------------------------------------

    def _on_question(self, owner: str, state: DialogueState) -> None:
        with self._lock:
            self.tally["questions"] += 1
            if not self.answer:
                self._held[owner] = state
                return
        self._reply(owner, state)

    def answer_held(self) -> int:
        """Answers the questions left unanswered while `answer` was False; how many."""
        with self._lock:
            held, self._held = list(self._held.items()), {}
        for owner, state in held:
            self._reply(owner, state)
        return len(held)

    def _reply(self, owner: str, state: DialogueState) -> None:
        place_id = owner.rsplit("#", 1)[0]
        user = self._users.get(place_id)
        if user is None:
            user = self._users[place_id] = FactUser(self.places[place_id])
        question = conversions.question_msg_to_core(state.pending_question)
        text = user.answer(question)
        with self._lock:
            self.tally["answers"] += 1
        self.say(text, state.dialogue_id, int(state.round) + 1)

    def _on_finished(self, owner: str, msg: DialogueState) -> None:
        with self._lock:
            self._held.pop(owner, None)
        self._record(owner, msg.dialogue_id, STATUS_NAMES.get(msg.status, "?"), msg)
        self.forget(msg.dialogue_id, int(msg.round))

    def _on_refused(self, owner: str, msg: DialogueState) -> None:
        with self._lock:
            self.refusals.pop(msg.request_id, None)
        self._record(owner, "", "refused", msg)

    def _record(self, owner: str, did: str, status: str, msg: DialogueState) -> None:
        with self._lock:
            started = self._started_at.pop(owner, None)
            if started is None:
                return  # already ended: a repeated final state
            self.tally[status] += 1
            if status in ("failed", "cancelled", "refused"):
                reason = f"{status}: {msg.detail.split(' for round')[0][:60]}"
                self.reasons[reason] += 1
                self.examples.setdefault(reason, msg.detail)
            self.outcomes.append(
                Outcome(
                    owner,
                    did,
                    status,
                    msg.detail,
                    len(msg.questions),
                    time.monotonic() - started,
                )
            )
