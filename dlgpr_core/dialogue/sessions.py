"""Every dialogue of one dialogue manager: ids, routing, rejections and forgetting.

A robot talks to several people (or one person several times) and hears utterances that
belong to no live dialogue: a description starts one, an answer names its dialogue id, and
anything else is refused with a reason the sender can read. This is transport-independent
bookkeeping around `DialogueSession`, so the ROS node only converts messages and publishes
what comes back, and a test can drive thousands of dialogues without DDS.

Memory stays bounded whatever arrives: at most `max_live` dialogues run at once (a new
description beyond that is refused, naming the cap and what to do), a question left
unanswered ends its dialogue after the config's `answer_timeout`, and at most
`max_finished` finished dialogues are remembered, each slimmed to its top-k candidates.
Every event costs O(log n) at most: finishing pops one id, and a tick visits only the
dialogues whose deadline has passed (a heap of deadlines), never all of them.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

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
    nothing), or the sender of a refused description by its `request_id`; with neither,
    only log and count it."""

    dialogue_id: str
    round: int
    problem: str
    known: DialogueState | None = None
    request_id: str = ""
    counter: str = ""
    """What is counted besides "rejected" (e.g. "refused_full"), if anything."""


PoolAction = Action | Reject


@dataclass(frozen=True)
class PoolLimits:
    """What one manager accepts and remembers."""

    max_utterance_bytes: int = 10_000
    max_finished: int = 1000
    """Finished dialogues remembered (late answers get "already finished", not "unknown")."""
    max_live: int = 200
    """Dialogues running at once; a description beyond them is refused (a flood of new
    dialogues must not grow memory, nor starve the dialogues already running)."""

    def __post_init__(self) -> None:
        if self.max_utterance_bytes < 1 or self.max_finished < 0 or self.max_live < 1:
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
        """Live dialogues and the remembered finished ones (those also in `_finished`)."""
        self._finished: deque[str] = deque()
        self._deadlines: list[tuple[float, int, str]] = []
        """Heap of (deadline, tie-breaker, id); an entry is current only while it matches
        `_due[id]`, older ones are skipped when popped (lazy deletion)."""
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
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
        """Dialogues held: the live ones and the remembered finished ones."""
        return len(self._sessions)

    @property
    def live(self) -> int:
        """Dialogues not finished yet."""
        return len(self._sessions) - len(self._finished)

    # -- events ---------------------------------------------------------------------------

    def start(self, text: str, request_id: str = "") -> tuple[str | None, list[PoolAction]]:
        """A new dialogue with `text` as its description; (None, a rejection) when the text
        is unusable."""
        problem = self._problem(text)
        if problem:
            return None, self._tally([Reject("", 0, problem, request_id=request_id)])
        if self.live >= self.limits.max_live:
            return None, self._tally([self._full(request_id)])
        self._next += 1
        did = f"dlg-{self._prefix}-{self._next}"
        session, actions = DialogueSession.begin(
            did, text, self.config, self.reranker, self.clock, request_id=request_id
        )
        self._sessions[did] = session
        self.counters["started"] += 1
        out = self._tally(actions)
        self._schedule(session)
        return did, out

    def _full(self, request_id: str) -> Reject:
        wait = (
            f", or wait for one to time out (answer_timeout {self.config.answer_timeout:g} s)"
            if self.config.answer_timeout is not None
            else ""
        )
        problem = (
            f"refused: {self.live} dialogues are live, the most this manager runs at once "
            f"(max_live_dialogues={self.limits.max_live}); finish or cancel one{wait}, "
            "or raise max_live_dialogues"
        )
        return Reject("", 0, problem, request_id=request_id, counter="refused_full")

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
        """Re-sends and time-outs of the dialogues whose deadline has passed (waiting for a
        peer or for the person); the others are not even looked at."""
        now = self.clock()
        due: list[DialogueSession] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, did = heapq.heappop(self._deadlines)
            if self._due.get(did) != deadline:
                continue  # superseded: the dialogue moved on since this entry was pushed
            del self._due[did]
            session = self._sessions.get(did)
            if session is not None and not session.done:
                due.append(session)
        out: list[PoolAction] = []
        for session in due:
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
        out = self._tally(session.handle(event))
        self._schedule(session)
        return out

    def _schedule(self, session: DialogueSession) -> None:
        """Keeps the session's current deadline in the heap (one push per change)."""
        did, deadline = session.dialogue_id, session.deadline
        if deadline is None or self._due.get(did) == deadline:
            return
        self._due[did] = deadline
        heapq.heappush(self._deadlines, (deadline, next(self._seq), did))
        if len(self._deadlines) > 4 * len(self._due) + 64:
            # superseded entries outnumber current ones: rebuild (amortised O(1) per push)
            self._deadlines = [(t, next(self._seq), d) for d, t in self._due.items()]
            heapq.heapify(self._deadlines)

    def _tally(self, actions: Sequence[PoolAction]) -> list[PoolAction]:
        """Counts what happened and forgets the oldest finished dialogues beyond the budget
        (live ones are never dropped)."""
        for a in actions:
            if isinstance(a, Notice):
                self.counters[a.counter] += 1
            elif isinstance(a, Reject):
                self.counters["rejected"] += 1
                if a.counter:
                    self.counters[a.counter] += 1
            elif isinstance(a, Finish):
                self._on_finish(a.state)
        while len(self._finished) > self.limits.max_finished:
            self._sessions.pop(self._finished.popleft(), None)
        return list(actions)

    def _on_finish(self, state: DialogueState) -> None:
        """Remembers a finished dialogue slimmed to what a late answer's refusal and a
        reader of its outcome need (its top-k candidates, not the whole `search_k`
        ranking: a remembered dialogue then costs a few KB, not a hundred)."""
        did = state.dialogue_id
        self.counters["finished"] += 1
        self._due.pop(did, None)
        self._finished.append(did)
        session = self._sessions.get(did)
        if session is not None:
            session.state = replace(state, ranking=state.candidates)
