"""The dialogue session and the pool of sessions, driven by hand with a fake clock.

No retriever and no questioner: rankings and questions are made up here, so every rule of
the state machine (phases, re-sends and time-outs, the repeat rule, the belief, the answer
update, the stop rule, stale events, cancel) is checked against hand-computed values.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Sequence
from dataclasses import replace

import pytest

from dlgpr_core.dialogue.questions import Question, free_question, presence_question
from dlgpr_core.dialogue.session import (
    Action,
    Answered,
    Ask,
    Asked,
    Cancel,
    DialogueSession,
    Event,
    Finish,
    Notice,
    PublishState,
    Ranked,
    RequestQuestion,
    RequestRetrieval,
    Tick,
    first,
    is_repeat,
)
from dlgpr_core.dialogue.sessions import PoolAction, PoolLimits, Reject, SessionPool
from dlgpr_core.dialogue.state import AWAITING_QUESTION, DialogueConfig, Status
from dlgpr_core.mapdb.report import PlaceHit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def hits(*scores: float) -> list[PlaceHit]:
    return [
        PlaceHit(
            rank=i + 1,
            score=s,
            place_id=f"T:{i}",
            lat=0.0,
            lon=0.0,
            image_path="",
            image_id=i,
            city="T",
            image_root="",
        )
        for i, s in enumerate(scores)
    ]


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


CFG = DialogueConfig(
    max_rounds=2,
    top_k=3,
    search_k=5,
    confidence=0.9,
    temperature=0.05,
    request_timeout=2.0,
    max_resends=1,
)


def begin(cfg: DialogueConfig = CFG, reranker=None, clock=None):
    return DialogueSession.begin("d", "  A bank.  ", cfg, reranker, clock or Clock())


def test_one_round_trip_and_the_belief() -> None:
    session, actions = begin()
    assert kinds(actions) == ["RequestRetrieval", "PublishState"]
    req = first(actions, RequestRetrieval)
    assert req is not None and (req.round, req.query, req.k) == (0, "A bank.", 5)
    assert session.phase == "retrieving" and session.state.detail == "retrieving"
    actions = session.handle(Ranked(0, hits(0.50, 0.45, 0.40, 0.1)))
    assert kinds(actions) == ["PublishState", "RequestQuestion"]
    # belief = softmax(score / 0.05) over the top 3 only: exp(0, -1, -2) normalised
    z = 1 + math.exp(-1) + math.exp(-2)
    assert session.state.belief == pytest.approx((1 / z, math.exp(-1) / z, math.exp(-2) / z))
    assert len(session.state.candidates) == 3 and len(session.state.ranking) == 4
    q = presence_question("fountain")
    actions = session.handle(Asked(0, q, "info-gain"))
    assert kinds(actions) == ["PublishState", "Ask"]
    ask = first(actions, Ask)
    assert ask is not None and ask.question == q
    assert session.state.pending_question == q and session.state.questions == ()
    assert session.state.asked_by == "info-gain"
    actions = session.handle(Answered("  Yes, there is a fountain. "))
    req = first(actions, RequestRetrieval)
    assert req is not None and (req.round, req.query) == (1, "A bank. Yes, there is a fountain.")
    assert session.state.questions == (q,) and session.state.pending_question is None


def test_stop_rules_in_order() -> None:
    # confident: the top belief reaches 0.9 (score gap 0.2 = 4 temperatures)
    session, _ = begin()
    actions = session.handle(Ranked(0, hits(0.9, 0.7)))
    assert kinds(actions) == ["PublishState", "Finish"]
    assert session.state.stop_reason == "confident" and session.state.status == Status.CONFIDENT
    assert session.state.detail == f"belief {session.state.confidence:.2f} >= 0.9"
    # no places at all
    session, _ = begin()
    session.handle(Ranked(0, []))
    assert session.state.stop_reason == "no_candidates"
    assert session.state.status == Status.FAILED
    # the round limit: two questions, then the third ranking stops it
    session, _ = begin()
    for r, word in enumerate(("fountain", "tree")):
        session.handle(Ranked(r, hits(0.5, 0.5)))
        session.handle(Asked(r, presence_question(word)))
        session.handle(Answered("No."))
    session.handle(Ranked(2, hits(0.5, 0.5)))
    assert session.state.stop_reason == "max_rounds" and session.state.status == Status.MAX_ROUNDS
    assert session.state.detail == "round limit 2 reached"


def test_nothing_to_ask_and_repeats() -> None:
    session, _ = begin()
    session.handle(Ranked(0, hits(0.5, 0.5)))
    actions = session.handle(Asked(0, None, "random"))
    assert kinds(actions) == ["PublishState", "Finish"]
    assert session.state.stop_reason == "no_question"
    assert session.state.status == Status.MAX_ROUNDS  # a normal end, like the round limit
    assert session.state.detail == "random: nothing left to ask"
    session, _ = begin()
    q = presence_question("fountain")
    session.handle(Ranked(0, hits(0.5, 0.5)))
    session.handle(Asked(0, q))
    session.handle(Answered("No."))
    session.handle(Ranked(1, hits(0.5, 0.5)))
    # the same probe reworded is a repeat, and so is the same wording as free text
    session.handle(Asked(1, free_question("is there a fountain")))
    assert session.state.stop_reason == "repeated" and session.state.status == Status.FAILED
    assert "questioner repeated" in session.state.detail


def test_repeat_rule() -> None:
    q = presence_question("fountain")
    assert is_repeat(Question("Any fountain around?", "presence", "fountain"), [q])
    assert is_repeat(free_question("Is there a FOUNTAIN?"), [q])
    assert not is_repeat(presence_question("tree"), [q])


def test_stale_events_change_nothing() -> None:
    session, _ = begin()
    before = session.state
    for event in (Ranked(1, hits(0.5)), Asked(0, presence_question("tree")), Answered("Yes.")):
        actions = session.handle(event)
        assert len(actions) == 1 and isinstance(actions[0], Notice)
        assert session.state == before
    session.handle(Ranked(0, hits(0.5, 0.5)))
    session.handle(Asked(0, presence_question("tree")))
    # an answer for a round other than the one asked is stale too
    (note,) = session.handle(Answered("Yes.", round=5))
    assert isinstance(note, Notice) and note.counter == "stale_answers"
    assert "answer for round 5 ignored while awaiting answer in round 0" in note.message


def test_resends_then_time_out() -> None:
    clock = Clock()
    session, _ = begin(clock=clock)
    assert session.handle(Tick()) == []
    clock.t += 2.0
    actions = session.handle(Tick())
    assert kinds(actions) == ["Notice", "RequestRetrieval"]
    assert "no candidates from the retrieval node; re-sending (1)" in actions[0].message
    clock.t += 1.0
    assert session.handle(Tick()) == []  # the re-send restarted the wait
    clock.t += 1.0
    actions = session.handle(Tick())
    assert kinds(actions) == ["PublishState", "Finish"]
    assert session.state.stop_reason == "timeout"
    assert session.state.detail == (
        "no candidates from the retrieval node for round 0 after 2 tries of 2 s"
    )
    # waiting for the questioner: the state itself is re-sent (it is the request)
    session, _ = begin(clock=clock)
    session.handle(Ranked(0, hits(0.5, 0.5)))
    clock.t += 2.5
    assert kinds(session.handle(Tick())) == ["Notice", "PublishState", "RequestQuestion"]
    # waiting for the person is not a peer's silence: no re-send, no time-out
    session.handle(Asked(0, presence_question("tree")))
    clock.t += 100
    assert session.handle(Tick()) == []


def test_cancel_and_answer_update() -> None:
    session, _ = begin()
    session.handle(Ranked(0, hits(0.5, 0.5)))
    actions = session.handle(Cancel("the person left"))
    assert kinds(actions) == ["PublishState", "Finish"]
    assert session.state.status == Status.CANCELLED and session.state.detail == "the person left"
    assert session.handle(Answered("Yes.")) == []  # done: nothing happens any more

    seen: list[tuple[int, int]] = []

    def reverse(ranking, questions, answers, description=""):
        assert description == "A bank."
        seen.append((len(questions), len(answers)))
        return list(reversed(ranking))

    session, _ = begin(reranker=reverse)
    session.handle(Ranked(0, hits(0.5, 0.4, 0.3)))
    assert seen == [(0, 0)]
    assert [h.place_id for h in session.state.candidates] == ["T:2", "T:1", "T:0"]
    # the belief follows the re-scored order (scores unchanged by this reranker)
    assert session.state.belief[0] < session.state.belief[2]


def test_resume_from_a_snapshot() -> None:
    session, _ = begin()
    session.handle(Ranked(0, hits(0.5, 0.5)))
    session.handle(Asked(0, presence_question("tree")))
    resumed = DialogueSession(session.state, CFG)
    actions = resumed.handle(Answered("No trees."))
    assert first(actions, RequestRetrieval) is not None
    assert resumed.state.answers == ("No trees.",)


# --- the pool --------------------------------------------------------------------------------


def pool(**limits: int) -> SessionPool:
    return SessionPool(CFG, id_prefix="t", clock=Clock(), limits=PoolLimits(**limits))


def test_pool_routes_and_counts() -> None:
    p = pool()
    did, actions = p.start("A bank.", request_id="req-1")
    assert did == "dlg-t-1" and p.counters["started"] == 1
    state = first(actions, PublishState)
    assert state is not None and state.state.request_id == "req-1"
    p.on_candidates(did, 0, hits(0.5, 0.5))
    actions = p.on_question(did, 0, presence_question("tree"), "info-gain")
    assert first(actions, Ask) is not None
    # answers go to their dialogue; late and stale ones are counted, not applied
    assert first(p.on_utterance(did, "No."), RequestRetrieval) is not None
    assert p.on_candidates("dlg-t-9", 0, hits(0.5)) == []
    assert p.counters["stale_candidates"] == 1
    # a description without an id starts another dialogue
    assert first(p.on_utterance("", "A cafe."), RequestRetrieval) is not None
    assert "dlg-t-2" in p and len(p) == 2


def test_pool_rejections() -> None:
    p = pool(max_utterance_bytes=20)
    (r,) = p.on_utterance("", "   ")
    assert isinstance(r, Reject) and r.dialogue_id == "" and r.problem == "empty utterance"
    (r,) = p.on_utterance("", "x" * 21)
    assert isinstance(r, Reject) and r.problem == "utterance too long: 21 bytes > 20"
    (r,) = p.on_utterance("nope", "Yes.", 3)
    assert isinstance(r, Reject) and r.problem == "unknown dialogue id 'nope'" and r.round == 3
    assert p.counters["rejected"] == 3
    did, _ = p.start("A bank.")
    assert did is not None
    p.on_candidates(did, 0, hits(0.5, 0.5))
    p.on_question(did, 0, presence_question("tree"), "q")
    # an unusable answer to a live dialogue ends it visibly
    actions = p.on_utterance(did, "y" * 30)
    assert first(actions, Finish) is not None
    session = p.get(did)
    assert session is not None and session.state.detail.startswith("rejected answer: utterance")
    # and an answer to a finished dialogue carries its history back
    (r,) = p.on_utterance(did, "More.")
    assert isinstance(r, Reject) and "already finished" in r.problem and r.known is not None
    assert r.known.d0 == "A bank."


def test_pool_forgets_the_oldest_finished_dialogues_only() -> None:
    p = pool(max_finished=2)
    ids = []
    for i in range(4):
        did, _ = p.start(f"Place {i}.")
        assert did is not None
        ids.append(did)
    live, *finished = ids
    for did in finished:
        p.cancel(did)
    p.on_candidates(live, 0, hits(0.5, 0.5))
    assert live in p and finished[0] not in p and all(d in p for d in finished[1:])
    assert p.counters["finished"] == 3


# --- bounded memory: the answer time-out, the cap on live dialogues, O(1) bookkeeping ------

TIMED = replace(CFG, max_rounds=5, answer_timeout=60.0)


def test_a_question_left_unanswered_ends_the_dialogue() -> None:
    clock = Clock()
    session, _ = begin(TIMED, clock=clock)
    session.handle(Ranked(0, hits(0.5, 0.5)))
    clock.t += 50  # the wait for the person counts from the question, not the ranking
    session.handle(Asked(0, presence_question("tree"), "info-gain"))
    assert session.deadline == clock.t + 60
    clock.t += 59.9
    assert session.handle(Tick()) == []
    clock.t += 0.1
    actions = session.handle(Tick())
    assert kinds(actions) == ["PublishState", "Finish"]
    s = session.state
    assert s.stop_reason == "no_answer" and s.status == Status.FAILED and s.done
    assert s.pending_question is None and s.phase == "done"
    assert s.detail == (
        "no answer to 'Is there a tree?' within 60 s (answer_timeout); "
        "describe the place again to start a new dialogue"
    )
    # an answer in time restarts the clock for the next question
    session, _ = begin(TIMED, clock=clock)
    session.handle(Ranked(0, hits(0.5, 0.5)))
    session.handle(Asked(0, presence_question("tree")))
    clock.t += 59
    session.handle(Answered("No."))
    session.handle(Ranked(1, hits(0.5, 0.5)))
    session.handle(Asked(1, presence_question("bench")))
    clock.t += 59
    assert session.handle(Tick()) == [] and not session.done
    with pytest.raises(ValueError, match="answer_timeout"):
        DialogueConfig(answer_timeout=0.0)


def serve(p: SessionPool, actions: Sequence[PoolAction], clock: Clock | None = None) -> None:
    """An instant retrieval node and questioner (no person): every ranking and question the
    pool asks for is delivered at once, so dialogues reach "awaiting answer"."""
    todo = list(actions)
    while todo:
        a = todo.pop(0)
        if isinstance(a, RequestRetrieval):
            todo += p.on_candidates(a.dialogue_id, a.round, hits(0.5, 0.5, 0.5, 0.5, 0.5))
        elif isinstance(a, RequestQuestion):
            q = presence_question(f"thing {a.state.round}")
            todo += p.on_question(a.state.dialogue_id, a.state.round, q, "q")


def timed_pool(clock: Clock, **limits: int) -> SessionPool:
    return SessionPool(TIMED, id_prefix="f", clock=clock, limits=PoolLimits(**limits))


def test_the_pool_refuses_descriptions_beyond_its_cap() -> None:
    clock = Clock()
    p = timed_pool(clock, max_live=3)
    ids = []
    for i in range(3):
        did, actions = p.start(f"Place {i}.", request_id=f"r{i}")
        serve(p, actions)
        ids.append(did)
    assert p.live == 3
    did, (r,) = p.start("One more place.", request_id="r3")
    assert did is None and isinstance(r, Reject)
    assert r.request_id == "r3" and r.dialogue_id == "" and r.counter == "refused_full"
    assert r.problem == (
        "refused: 3 dialogues are live, the most this manager runs at once "
        "(max_live_dialogues=3); finish or cancel one, or wait for one to time out "
        "(answer_timeout 60 s), or raise max_live_dialogues"
    )
    # an utterance without an id is a description too, and is refused the same way
    (r,) = p.on_utterance("", "And another.", request_id="r4")
    assert isinstance(r, Reject) and r.counter == "refused_full"
    assert p.counters["refused_full"] == 2 and p.counters["rejected"] == 2
    # the dialogues already running are untouched; one ending makes room
    assert all((x := p.get(str(d))) is not None and not x.done for d in ids)
    p.cancel(str(ids[0]))
    did, _ = p.start("Now there is room.")
    assert did is not None and p.live == 3
    with pytest.raises(ValueError):
        PoolLimits(max_live=0)


def test_a_flood_of_new_dialogues_stays_bounded_and_expires() -> None:
    """The finding: 20,000 utterances of 9 KB without a dialogue id left 20,000 live
    dialogues and 200 MB. Now the cap bounds the live ones, the answer time-out ends
    them, and memory stops growing once the finished ones fill their budget."""
    clock = Clock()
    p = timed_pool(clock, max_live=100, max_finished=200)
    text = "a street corner with a red door " * 280  # 9 KB
    assert 8_900 < len(text.encode()) < 10_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        at: dict[int, int] = {}
        for i in range(1, 20_001):
            clock.t += 0.05  # 20 utterances a second for 1,000 s
            serve(p, p.on_utterance("", text))
            serve(p, p.tick())
            assert p.live <= 100
            if i in (10_000, 20_000):
                at[i] = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    c = p.counters
    assert c["started"] > 1000  # time-outs made room again and again
    assert c["started"] + c["refused_full"] == 20_000
    assert len(p) <= 100 + 200
    # bounded (live + remembered dialogues of ~9 KB each), and flat over the second half
    assert at[20_000] < 300 * 40_000, at
    assert abs(at[20_000] - at[10_000]) < 0.1 * at[10_000], at
    # after the time-out nothing is left running; every started dialogue ended visibly
    clock.t += 61
    serve(p, p.tick())
    assert p.live == 0 and c["finished"] == c["started"]
    remembered = [p.get(d) for d in list(p._finished)]
    assert all(r is not None and r.state.stop_reason == "no_answer" for r in remembered)
    # remembered dialogues keep their top-k candidates, not the whole ranking
    assert all(r is not None and len(r.state.ranking) == TIMED.top_k for r in remembered)


def test_a_tick_visits_only_the_dialogues_that_are_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """O(1) bookkeeping: with a thousand dialogues waiting for their people, a tick (the
    node runs several a second) touches none of them until a deadline passes."""
    clock = Clock()
    p = timed_pool(clock, max_live=2000)
    for i in range(1000):
        clock.t += 0.01
        serve(p, p.start(f"Place {i}.")[1])
    handled: list[str] = []
    original = DialogueSession.handle

    def counting(self: DialogueSession, event: Event) -> list[Action]:
        handled.append(self.dialogue_id)
        return original(self, event)

    monkeypatch.setattr(DialogueSession, "handle", counting)
    for _ in range(50):
        clock.t += 0.1
        assert p.tick() == []
    assert handled == []
    clock.t = 100.0 + 5.0 + 60.0 + 0.005  # the first 500 deadlines have passed
    finished = [a for a in p.tick() if isinstance(a, Finish)]
    assert len(handled) == len(finished) == 500
    assert p.live == 500


def test_retrievals_in_flight_are_bounded_and_held_ones_do_not_time_out() -> None:
    """A burst of dialogues: only `max_in_flight` requests go out; the others wait in the
    pool, in order, without their time-out running (the retrieval node is busy, not
    silent), and each answered one lets the next go."""
    clock = Clock()
    p = timed_pool(clock, max_in_flight=2)
    sent: list[RequestRetrieval] = []
    for i in range(5):
        sent += [a for a in p.start(f"Place {i}.")[1] if isinstance(a, RequestRetrieval)]
    assert [r.dialogue_id for r in sent] == ["dlg-f-1", "dlg-f-2"]
    assert p.requests() == (2, 3) and p.counters["requests_held"] == 3
    # the ones in flight time out and re-send as ever; the held ones do nothing
    clock.t += 2.0
    resent = [a for a in p.tick() if isinstance(a, RequestRetrieval)]
    assert sorted(r.dialogue_id for r in resent) == ["dlg-f-1", "dlg-f-2"]
    assert p.requests() == (2, 3)
    # an answer frees a slot: the oldest held request goes, its wait starting now
    clock.t += 0.5
    out = p.on_candidates("dlg-f-1", 0, hits(0.5, 0.5))
    released = [a for a in out if isinstance(a, RequestRetrieval)]
    assert [r.dialogue_id for r in released] == ["dlg-f-3"]
    third = p.get("dlg-f-3")
    assert third is not None and third.deadline == clock.t + 2.0
    # a held dialogue that is cancelled leaves the queue; a finished one frees its slot
    p.cancel("dlg-f-4")
    out = p.cancel("dlg-f-2")
    assert [a.dialogue_id for a in out if isinstance(a, RequestRetrieval)] == ["dlg-f-5"]
    assert p.requests() == (2, 0)
    # nobody was failed for waiting: only the cancelled ones ended
    assert p.counters["finished"] == 2 and p.live == 3


def test_questions_in_flight_are_bounded_too() -> None:
    """The questioner is a peer like the retrieval node: the state that asks it (published
    with the request) waits in the pool with it."""
    clock = Clock()
    p = timed_pool(clock, max_in_flight=1)
    a, _ = p.start("Place a.")
    b, _ = p.start("Place b.")
    assert a is not None and b is not None
    out = p.on_candidates(a, 0, hits(0.5, 0.5))
    assert kinds(out)[:2] == ["PublishState", "RequestQuestion"]
    assert kinds(out)[2:] == ["RequestRetrieval"]  # a's slot freed: b's retrieval goes
    out = p.on_candidates(b, 0, hits(0.5, 0.5))
    assert kinds(out) == []  # b awaits a question, but a's is in flight: held, unpublished
    assert p.requests(AWAITING_QUESTION) == (1, 1)
    clock.t += 5.0  # a re-sends; b, held, neither re-sends nor times out
    assert sorted(kinds(p.tick())) == ["Notice", "PublishState", "RequestQuestion"]
    out = p.on_question(a, 0, presence_question("tree"), "q")
    assert kinds(out) == ["PublishState", "Ask", "PublishState", "RequestQuestion"]
    state = first(out[2:], PublishState)
    assert state is not None and state.state.dialogue_id == b
    assert p.requests(AWAITING_QUESTION) == (1, 0)
