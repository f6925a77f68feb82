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

At most `max_in_flight` requests per peer (the retrieval node, the questioner) are in
flight; the others wait here, in order, and their time-out starts when they are sent.
Under a burst (100 dialogues starting at once) a peer's queue used to outlast the request
time-out: every dialogue re-sent, each re-send lengthened the queue, and dialogues failed
with the peer busy, not silent. A time-out now measures a peer's silence, not the length
of a queue.
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
    PublishState,
    Ranked,
    RequestQuestion,
    RequestRetrieval,
    Reranker,
    Tick,
)
from dlgpr_core.dialogue.state import (
    AWAITING_QUESTION,
    RETRIEVING,
    DialogueConfig,
    DialogueState,
    Phase,
)
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


PEER_PHASES: tuple[Phase, ...] = (RETRIEVING, AWAITING_QUESTION)
"""The phases that wait for a peer node: the retrieval node, the questioner."""


def _split_requests(actions: Sequence[Action]) -> list[tuple[Phase | None, list[Action]]]:
    """`actions` in order, each request to a peer grouped with what sends it: a retrieval
    request alone; a question request with the state published just before it (over ROS
    that state is the request). Other actions come alone, with no peer."""
    out: list[tuple[Phase | None, list[Action]]] = []
    for a in actions:
        if isinstance(a, RequestRetrieval):
            out.append((RETRIEVING, [a]))
        elif isinstance(a, RequestQuestion):
            if out and out[-1][0] is None and isinstance(out[-1][1][0], PublishState):
                out[-1] = (AWAITING_QUESTION, [*out[-1][1], a])
            else:
                out.append((AWAITING_QUESTION, [a]))
        else:
            out.append((None, [a]))
    return out


@dataclass(frozen=True)
class PoolLimits:
    """What one manager accepts and remembers."""

    max_utterance_bytes: int = 10_000
    max_finished: int = 1000
    """Finished dialogues remembered (late answers get "already finished", not "unknown")."""
    max_live: int = 200
    """Dialogues running at once; a description beyond them is refused (a flood of new
    dialogues must not grow memory, nor starve the dialogues already running)."""
    max_in_flight: int = 8
    """Requests sent and not answered at once, per peer (retrievals, questions); more wait
    in the pool (see the module docstring)."""

    def __post_init__(self) -> None:
        if (
            self.max_utterance_bytes < 1
            or self.max_finished < 0
            or self.max_live < 1
            or self.max_in_flight < 1
        ):
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
        self._in_flight: dict[Phase, set[str]] = {p: set() for p in PEER_PHASES}
        """Per peer (named by the phase that waits for it): dialogues whose request was
        sent and not answered yet."""
        self._held: dict[Phase, OrderedDict[str, list[Action]]] = {
            p: OrderedDict() for p in PEER_PHASES
        }
        """Per peer: requests waiting for a slot (the actions that send one), oldest first."""
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

    def requests(self, phase: Phase = RETRIEVING) -> tuple[int, int]:
        """(in flight, waiting to be sent) of the peer `phase` waits for."""
        return len(self._in_flight[phase]), len(self._held[phase])

    def _is_held(self, did: str) -> bool:
        return any(did in held for held in self._held.values())

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
        return did, self._after(session, actions)

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
            if session is not None and not session.done and not self._is_held(did):
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
        return self._after(session, session.handle(event))

    def _after(self, session: DialogueSession, actions: Sequence[Action]) -> list[PoolAction]:
        """Bookkeeping after `session` produced `actions`: retrieval slots, counters,
        forgetting, its deadline, and the held requests a freed slot lets go."""
        out = self._tally(self._admit(session, actions))
        self._schedule(session)
        return out + self._release()

    def _admit(self, session: DialogueSession, actions: Sequence[Action]) -> list[Action]:
        """Lets a request to a peer go if that peer has a free slot (a re-send always: its
        slot is taken), else holds it; frees the slot of a dialogue no longer waiting."""
        did, cap = session.dialogue_id, self.limits.max_in_flight
        out: list[Action] = []
        for phase, part in _split_requests(actions):
            if phase is None or did in self._in_flight[phase]:
                out += part
            elif len(self._in_flight[phase]) < cap:
                self._in_flight[phase].add(did)
                out += part
            else:
                self._held[phase][did] = part
                self.counters["requests_held"] += 1
        for phase in PEER_PHASES:
            if session.done or session.phase != phase:
                self._in_flight[phase].discard(did)
                self._held[phase].pop(did, None)
        return out

    def _release(self) -> list[PoolAction]:
        """Sends held requests while their peer has free slots (their wait starts now)."""
        out: list[PoolAction] = []
        for phase in PEER_PHASES:
            held, flying = self._held[phase], self._in_flight[phase]
            while held and len(flying) < self.limits.max_in_flight:
                did, part = held.popitem(last=False)
                session = self._sessions.get(did)
                if session is None or session.phase != phase:
                    continue
                session.restart_wait()
                flying.add(did)
                self._schedule(session)
                out += part
        return out

    def _schedule(self, session: DialogueSession) -> None:
        """Keeps the session's current deadline in the heap (one push per change); a held
        retrieval has none until it is sent."""
        did, deadline = session.dialogue_id, session.deadline
        if self._is_held(did):
            self._due.pop(did, None)
            return
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
