"""Every dialogue of one dialogue manager: ids, routing, rejections and forgetting.

A robot talks to several people (or one person several times) and hears utterances that
belong to no live dialogue: a description starts one, an answer names its dialogue id, and
anything else is refused with a reason the sender can read. This is transport-independent
bookkeeping around `DialogueSession`, so the ROS node only converts messages and publishes
what comes back, and a test can drive thousands of dialogues without DDS.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.session import (
    Action,
    Answered,
    Asked,
    Cancel,
    Clock,
    DialogueSession,
    Event,
    Fail,
    Finish,
    Notice,
    Ranked,
    Reranker,
    Tick,
)
from dlgpr_core.dialogue.state import DialogueConfig, DialogueState
from dlgpr_core.mapdb.report import PlaceHit


@dataclass(frozen=True)
class Reject:
    """An utterance was refused: tell its dialogue (a FAILED state naming `problem`, with
    the history of a `known` dialogue so a listener keeping only the latest state loses
    nothing) or, without an id, only log and count it."""

    dialogue_id: str
    round: int
    problem: str
    known: DialogueState | None = None


PoolAction = Action | Reject


@dataclass(frozen=True)
class PoolLimits:
    """What one manager accepts and remembers."""

    max_utterance_bytes: int = 10_000
    max_finished: int = 1000
    """Finished dialogues remembered (late answers get "already finished", not "unknown")."""

    def __post_init__(self) -> None:
        if self.max_utterance_bytes < 1 or self.max_finished < 0:
            raise ValueError(f"invalid limits {self}")


class SessionPool:
    """Dialogue sessions by id; feed it what arrives, carry out what it returns."""

    def __init__(
        self,
        config: DialogueConfig,
        reranker: Reranker | None = None,
        *,
        id_prefix: str,
        clock: Clock = time.monotonic,
        limits: PoolLimits | None = None,
    ) -> None:
        self.config = config
        self.reranker = reranker
        self.clock = clock
        self.limits = limits or PoolLimits()
        self.counters: Counter[str] = Counter()
        self._sessions: OrderedDict[str, DialogueSession] = OrderedDict()
        self._finished: deque[str] = deque()
        self._prefix = id_prefix
        self._next = 0

    # -- lookups --------------------------------------------------------------------------

    def get(self, dialogue_id: str) -> DialogueSession | None:
        return self._sessions.get(dialogue_id)

    def __contains__(self, dialogue_id: object) -> bool:
        return dialogue_id in self._sessions

    def __iter__(self) -> Iterator[DialogueSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    # -- events ---------------------------------------------------------------------------

    def start(self, text: str, request_id: str = "") -> tuple[str | None, list[PoolAction]]:
        """A new dialogue with `text` as its description; (None, a rejection) when the text
        is unusable."""
        problem = self._problem(text)
        if problem:
            return None, self._tally([Reject("", 0, problem)])
        self._next += 1
        did = f"dlg-{self._prefix}-{self._next}"
        session, actions = DialogueSession.begin(
            did, text, self.config, self.reranker, self.clock, request_id=request_id
        )
        self._sessions[did] = session
        self.counters["started"] += 1
        return did, self._tally(actions)

    def on_utterance(
        self, dialogue_id: str, text: str, round_: int = 0, request_id: str = ""
    ) -> list[PoolAction]:
        """An utterance: no id starts a dialogue, an id answers that dialogue's question."""
        if not dialogue_id:
            return self.start(text, request_id)[1]
        session = self._sessions.get(dialogue_id)
        if session is None:
            return self._tally(
                [Reject(dialogue_id, round_, f"unknown dialogue id {dialogue_id!r}")]
            )
        if session.done:
            s = session.state
            return self._tally(
                [
                    Reject(
                        dialogue_id,
                        s.round,
                        f"dialogue {dialogue_id} already finished ({s.detail})",
                        s,
                    )
                ]
            )
        problem = self._problem(text)
        if problem:
            # The answer is unusable and the question cannot meaningfully be re-asked by the
            # manager: end the dialogue visibly rather than guess.
            return self._feed(session, Fail("rejected_answer", f"rejected answer: {problem}"))
        return self._feed(session, Answered(text, round_ or None))

    def on_candidates(
        self, dialogue_id: str, round_: int, ranking: Sequence[PlaceHit]
    ) -> list[PoolAction]:
        return self._route(dialogue_id, Ranked(round_, ranking), "stale_candidates")

    def on_question(
        self, dialogue_id: str, round_: int, question: Question | None, questioner: str
    ) -> list[PoolAction]:
        return self._route(dialogue_id, Asked(round_, question, questioner), "stale_questions")

    def cancel(self, dialogue_id: str, detail: str = "cancelled") -> list[PoolAction]:
        return self._route(dialogue_id, Cancel(detail), "stale_cancels")

    def tick(self) -> list[PoolAction]:
        """Re-sends and time-outs of every dialogue waiting for a peer."""
        out: list[PoolAction] = []
        for session in list(self._sessions.values()):
            if not session.done:
                out += self._feed(session, Tick())
        return out

    # -- internals ------------------------------------------------------------------------

    def _problem(self, text: str) -> str:
        size = len(text.encode("utf-8"))
        if size > self.limits.max_utterance_bytes:
            return f"utterance too long: {size} bytes > {self.limits.max_utterance_bytes}"
        if not text.strip():
            return "empty utterance"
        return ""

    def _route(self, dialogue_id: str, event: Event, counter: str) -> list[PoolAction]:
        session = self._sessions.get(dialogue_id)
        if session is None or session.done:
            self.counters[counter] += 1  # e.g. a re-sent request answered twice
            return []
        return self._feed(session, event)

    def _feed(self, session: DialogueSession, event: Event) -> list[PoolAction]:
        return self._tally(session.handle(event))

    def _tally(self, actions: Sequence[PoolAction]) -> list[PoolAction]:
        """Counts what happened and forgets the oldest finished dialogues beyond the budget
        (live ones are never dropped)."""
        for a in actions:
            if isinstance(a, Notice):
                self.counters[a.counter] += 1
            elif isinstance(a, Reject):
                self.counters["rejected"] += 1
            elif isinstance(a, Finish):
                self.counters["finished"] += 1
                self._finished.append(a.state.dialogue_id)
        while len(self._finished) > self.limits.max_finished:
            self._sessions.pop(self._finished.popleft(), None)
        return list(actions)
