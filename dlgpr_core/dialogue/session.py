"""One dialogue as a pure, event-driven state machine: the only place its rules live.

A session is fed events (a ranking arrived, the questioner asked, the person answered, the
clock ticked, someone cancelled) and answers each with the actions its driver must carry
out (request a retrieval, request a question, ask the person, publish the state, finish).
It never searches, asks or publishes itself and never reads a clock it was not given, so
the synchronous `DialogueEngine` (evaluation, training data) and the ROS dialogue manager
(topics, timers, an action server) run the very same dialogue: phases, time-outs and
re-sends, the repeat rule, the belief, the answer update and the stop rule are here only.

    retrieving --Ranked--> awaiting question --Asked--> awaiting answer --Answered--> retrieving
        |                        |                       |                        ...
        +--(confident, round limit, no places, nothing to ask, repeat, time-out, no answer,
            cancel)--> done

Round r's ranking is made from d_r = concat(d0, a_1..a_r) (the reference formulas append
answers only), re-scored by the optional answer update, then read as the belief
softmax(score / temperature) over the top-k candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from dlgpr_core.dialogue.belief import softmax_belief
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.state import (
    AWAITING_ANSWER,
    AWAITING_QUESTION,
    DONE,
    RETRIEVING,
    DialogueConfig,
    DialogueState,
    StopReason,
)
from dlgpr_core.mapdb.report import PlaceHit


class Reranker(Protocol):
    """The answer update: the ranking re-scored by what the person said (the description
    and the answers to the questions), e.g. `evidence_update.EvidenceUpdate`; None keeps the
    paper's text-only update (answers only extend the query)."""

    def __call__(
        self,
        ranking: Sequence[PlaceHit],
        questions: Sequence[Question],
        answers: Sequence[str],
        description: str = "",
    ) -> list[PlaceHit]: ...


Clock = Callable[[], float]
"""Seconds on a monotonic clock; only differences are used (time-outs)."""


def _no_clock() -> float:
    return 0.0


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """The retrieval for `round` returned `ranking` (best first)."""

    round: int
    ranking: Sequence[PlaceHit]


@dataclass(frozen=True)
class Asked:
    """The questioner's question for `round`; None (or an empty text): nothing left to ask."""

    round: int
    question: Question | None
    questioner: str = "questioner"


@dataclass(frozen=True)
class Answered:
    """The person answered; `round` is the round the answer opens (the question's round + 1),
    or None for "the question awaiting an answer", whichever it is."""

    text: str
    round: int | None = None


@dataclass(frozen=True)
class Tick:
    """Time passed: re-send what a peer did not answer, or give up on it."""


@dataclass(frozen=True)
class Cancel:
    """Stop now (an action client cancelled, the person walked away)."""

    detail: str = "cancelled"


@dataclass(frozen=True)
class Fail:
    """Stop with an error the driver detected (e.g. an unusable answer)."""

    reason: StopReason
    detail: str


Event = Ranked | Asked | Answered | Tick | Cancel | Fail


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRetrieval:
    """Rank the map for `query` and feed back `Ranked(round, ...)`."""

    dialogue_id: str
    round: int
    query: str
    k: int


@dataclass(frozen=True)
class RequestQuestion:
    """Pick the next question for `state` and feed back `Asked(state.round, ...)`. (Over
    ROS the published state is the request: the questioner node reads it.)"""

    state: DialogueState


@dataclass(frozen=True)
class Ask:
    """Put `state.pending_question` to the person (speak it, show it)."""

    state: DialogueState

    @property
    def question(self) -> Question:
        assert self.state.pending_question is not None
        return self.state.pending_question


@dataclass(frozen=True)
class PublishState:
    """The dialogue's state changed: tell whoever follows it."""

    state: DialogueState


@dataclass(frozen=True)
class Finish:
    """The dialogue ended (`state.stop_reason`, `state.status`, `state.detail`); the best
    candidate of `state` is the localisation unless it failed."""

    state: DialogueState


@dataclass(frozen=True)
class Notice:
    """Something worth counting (and, with a message, logging) that changes nothing."""

    dialogue_id: str
    counter: str
    message: str = ""


Action = RequestRetrieval | RequestQuestion | Ask | PublishState | Finish | Notice
A = TypeVar("A")


def is_repeat(question: Question, asked: Sequence[Question]) -> bool:
    """The repeat rule: the same probe (key) or the same wording as an earlier question.
    Keys catch a probe reworded; wording catches free text that names a structured probe."""
    text = " ".join(question.text.lower().split()).rstrip("?. ")
    return any(
        question.key == q.key or text == " ".join(q.text.lower().split()).rstrip("?. ")
        for q in asked
    )


class DialogueSession:
    """One dialogue's state machine; see the module docstring.

    The current snapshot is `state`; a session can be resumed from any snapshot it
    produced (`DialogueSession(state, ...)`), which is how the engine steps a dialogue it
    returned earlier.
    """

    def __init__(
        self,
        state: DialogueState,
        config: DialogueConfig,
        reranker: Reranker | None = None,
        clock: Clock = _no_clock,
    ) -> None:
        self.state = state
        self.config = config
        self.reranker = reranker
        self.clock = clock
        self.sent_at = clock()
        self.resends = 0

    @classmethod
    def begin(
        cls,
        dialogue_id: str,
        d0: str,
        config: DialogueConfig,
        reranker: Reranker | None = None,
        clock: Clock = _no_clock,
        request_id: str = "",
    ) -> tuple[DialogueSession, list[Action]]:
        """A new dialogue about the description `d0`, and its first actions (retrieve)."""
        state = DialogueState(
            dialogue_id=dialogue_id,
            round=0,
            d0=d0.strip(),
            answers=(),
            questions=(),
            ranking=(),
            top_k=config.top_k,
            belief=(),
            phase=RETRIEVING,
            detail=RETRIEVING,
            request_id=request_id,
        )
        session = cls(state, config, reranker, clock)
        return session, [*session._request(), PublishState(session.state)]

    @property
    def dialogue_id(self) -> str:
        return self.state.dialogue_id

    @property
    def phase(self) -> str:
        return self.state.phase

    @property
    def done(self) -> bool:
        return self.state.done

    @property
    def deadline(self) -> float | None:
        """When a `Tick` next changes something (a re-send or a time-out), on the session's
        clock; None when no tick ever will (done, or no time-out for this phase). A driver
        of many sessions ticks only those whose deadline has passed."""
        s, cfg = self.state, self.config
        if s.done:
            return None
        timeout = cfg.answer_timeout if s.phase == AWAITING_ANSWER else cfg.request_timeout
        return None if timeout is None else self.sent_at + timeout

    def restart_wait(self) -> None:
        """The pending request goes out only now (its driver held it back, e.g. to bound the
        retrievals in flight): its time-out counts from here, not from when it was made."""
        self.sent_at = self.clock()

    # -- events ---------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """The actions `event` calls for (nothing once the dialogue is done)."""
        if self.state.done:
            return []
        if isinstance(event, Ranked):
            return self._on_ranked(event)
        if isinstance(event, Asked):
            return self._on_asked(event)
        if isinstance(event, Answered):
            return self._on_answered(event)
        if isinstance(event, Tick):
            return self._on_tick()
        if isinstance(event, Cancel):
            return self._finish("cancelled", event.detail)
        return self._finish(event.reason, event.detail)

    def _stale(self, counter: str, what: str) -> list[Action]:
        s = self.state
        return [
            Notice(
                s.dialogue_id,
                counter,
                f"{s.dialogue_id}: {what} ignored while {s.phase} in round {s.round}",
            )
        ]

    def _on_ranked(self, ev: Ranked) -> list[Action]:
        s, cfg = self.state, self.config
        if s.phase != RETRIEVING or ev.round != s.round:
            return self._stale("stale_candidates", f"ranking for round {ev.round}")
        ranking = tuple(ev.ranking)
        if self.reranker is not None:
            ranking = tuple(self.reranker(ranking, s.questions, s.answers, description=s.d0))
        scores = [h.score for h in ranking[: cfg.top_k]]
        self.state = replace(
            s, ranking=ranking, belief=tuple(softmax_belief(scores, cfg.temperature))
        )
        self.resends = 0
        stop = self._stop_rule()
        if stop is not None:
            return self._finish(*stop)
        return self._await_question()

    def _stop_rule(self) -> tuple[StopReason, str] | None:
        """Why the dialogue stops before a question is asked, else None: confident first,
        then the round limit, then an empty ranking (the questioner's own "nothing left to
        ask" is only known once it was asked)."""
        s, cfg = self.state, self.config
        if cfg.confidence is not None and s.belief and s.confidence >= cfg.confidence:
            return "confident", f"belief {s.confidence:.2f} >= {cfg.confidence}"
        if s.round >= cfg.max_rounds:
            return "max_rounds", f"round limit {cfg.max_rounds} reached"
        if not s.ranking:
            return "no_candidates", "the retrieval node returned no places"
        return None

    def _await_question(self) -> list[Action]:
        self.state = replace(self.state, phase=AWAITING_QUESTION, detail=AWAITING_QUESTION)
        self.sent_at = self.clock()
        return [PublishState(self.state), RequestQuestion(self.state)]

    def _on_asked(self, ev: Asked) -> list[Action]:
        s = self.state
        if s.phase != AWAITING_QUESTION or ev.round != s.round:
            return self._stale("stale_questions", f"question for round {ev.round}")
        q = ev.question
        if q is None or not q.text.strip():
            return self._finish("no_question", f"{ev.questioner}: nothing left to ask")
        if is_repeat(q, s.questions):
            return self._finish("repeated", f"questioner repeated {q.text!r}")
        self.state = replace(
            s,
            pending_question=q,
            asked_by=ev.questioner,
            phase=AWAITING_ANSWER,
            detail=AWAITING_ANSWER,
        )
        self.resends = 0
        self.sent_at = self.clock()  # the answer time-out counts from the question
        return [PublishState(self.state), Ask(self.state)]

    def _on_answered(self, ev: Answered) -> list[Action]:
        s = self.state
        if (
            s.phase != AWAITING_ANSWER
            or s.pending_question is None
            or (ev.round and ev.round != s.round + 1)
        ):
            return self._stale("stale_answers", f"answer for round {ev.round}")
        self.state = replace(
            s,
            round=s.round + 1,
            questions=(*s.questions, s.pending_question),
            answers=(*s.answers, ev.text.strip()),
            pending_question=None,
            phase=RETRIEVING,
            detail=RETRIEVING,
        )
        self.resends = 0
        return self._request()

    def _request(self) -> list[Action]:
        s = self.state
        self.sent_at = self.clock()
        return [RequestRetrieval(s.dialogue_id, s.round, s.query, self.config.k)]

    def _on_tick(self) -> list[Action]:
        """Re-sends what a peer (restarted, not yet discovered) did not answer in time; ends
        a dialogue whose question the person left unanswered for `answer_timeout`."""
        s, cfg = self.state, self.config
        deadline = self.deadline
        if deadline is None or self.clock() < deadline:
            return []
        if s.phase == AWAITING_ANSWER:
            asked = s.pending_question.text if s.pending_question is not None else "the question"
            detail = (
                f"no answer to {asked!r} within {cfg.answer_timeout:g} s (answer_timeout); "
                "describe the place again to start a new dialogue"
            )
            return self._finish("no_answer", detail)
        timeout = cfg.request_timeout
        assert timeout is not None  # a deadline outside AWAITING_ANSWER comes from it
        peer = (
            "candidates from the retrieval node"
            if s.phase == RETRIEVING
            else "question from the questioner node"
        )
        if self.resends >= cfg.max_resends:
            detail = (
                f"no {peer} for round {s.round} after {self.resends + 1} tries of {timeout:g} s"
            )
            return self._finish("timeout", detail)
        self.resends += 1
        message = f"{s.dialogue_id}: no {peer}; re-sending ({self.resends})"
        note = Notice(s.dialogue_id, "resends", message)
        if s.phase == RETRIEVING:
            return [note, *self._request()]
        self.sent_at = self.clock()
        return [note, PublishState(s), RequestQuestion(s)]

    def _finish(self, reason: StopReason, detail: str) -> list[Action]:
        self.state = replace(
            self.state,
            done=True,
            stop_reason=reason,
            phase=DONE,
            detail=detail,
            pending_question=None,
        )
        return [PublishState(self.state), Finish(self.state)]


def first(actions: Sequence[object], kind: type[A]) -> A | None:
    """The first action of `kind` in `actions`, if any (for synchronous drivers)."""
    return next((a for a in actions if isinstance(a, kind)), None)


__all__ = [
    "DONE",
    "Action",
    "Answered",
    "Ask",
    "Asked",
    "Cancel",
    "DialogueSession",
    "Event",
    "Fail",
    "Finish",
    "Notice",
    "PublishState",
    "Ranked",
    "RequestQuestion",
    "RequestRetrieval",
    "Reranker",
    "Tick",
    "first",
    "is_repeat",
]
