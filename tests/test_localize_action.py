"""The `localize` action over real DDS: a goal, one feedback per round, the result, cancel.

A real rclpy ActionClient talks to the dialogue manager of a full `bringup` graph (the
dlgpr-lite encoder over the small SynthCities map of tests/test_ros_graph.py). The person is
played by this test: it answers each feedback's question on the `utterance` topic, truthfully
from the target's facts, as a person at the robot would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from test_ros_graph import Probe, build_map, core_dialogues, graph_overrides, wait_connected

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.users.fact import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.action import Localize
from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.msg import DialogueState

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Any:
    return build_map(tmp_path_factory.mktemp("localize"))


@pytest.fixture(scope="module")
def graph(city: Any) -> Iterator[Graph]:
    overrides = graph_overrides(city[0], request_timeout=1.0, max_resends=8)
    with bringup(None, overrides, "typed", print_dialogue=False) as g:
        yield g


@pytest.fixture(scope="module")
def probe(graph: Graph) -> Probe:
    p = Probe(graph)
    wait_connected(graph, p)
    return p


class Person:
    """An action client, and the person who answers the questions in its feedback."""

    def __init__(self, graph: Graph, probe: Probe) -> None:
        self.graph, self.probe = graph, probe
        self.client: ActionClient[Any, Any, Any] = ActionClient(probe, Localize, "localize")
        assert self.client.wait_for_server(timeout_sec=10), "no localize action server"
        self.lock = threading.Lock()
        self.feedback: dict[str, list[Any]] = {}

    def send(self, description: str, place: PlaceAnnotation | None, answer: bool = True) -> Any:
        user = FactUser(place) if place is not None else None

        def on_feedback(msg: Any) -> None:
            fb = msg.feedback
            with self.lock:
                self.feedback.setdefault(fb.dialogue_id, []).append(fb)
            if answer and user is not None and fb.question.text:
                q = conversions.question_msg_to_core(fb.question)
                self.probe.say(user.answer(q), fb.dialogue_id, int(fb.round) + 1)

        future = self.client.send_goal_async(
            Localize.Goal(description=description), feedback_callback=on_feedback
        )
        assert self.graph.run_until(future.done, 10), "the goal was never answered"
        handle = future.result()
        assert handle is not None and handle.accepted
        return handle

    def result(self, handle: Any, timeout: float = 60) -> Any:
        future = handle.get_result_async()
        assert self.graph.run_until(future.done, timeout), "no result"
        return future.result()


@pytest.fixture(scope="module")
def person(graph: Graph, probe: Probe) -> Iterator[Person]:
    p = Person(graph, probe)
    yield p
    p.client.destroy()


def test_goal_feedback_per_round_and_result(
    graph: Graph, probe: Probe, person: Person, city: Any
) -> None:
    map_path, places, positions = city
    core = core_dialogues(map_path, places)
    target = next(pid for pid, r in core.items() if r.final.questions)
    place = places[target]
    response = person.result(person.send(place.caption, place))
    result = response.result
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert result.status in (DialogueState.STATUS_CONFIDENT, DialogueState.STATUS_MAX_ROUNDS)
    did = result.dialogue_id
    # the same dialogue the in-process engine runs, reported on the topics too
    expected = core[target].final
    assert list(result.questions) == [q.text for q in expected.questions]
    final = probe.last(did)
    assert final is not None and final.done and final.status == result.status
    assert list(result.history) == list(final.history)
    loc = result.localization
    assert loc.place_id == final.best_place_id == expected.candidates[0].place_id
    assert loc.rounds_used == final.round == len(result.questions)
    assert (loc.fix.latitude, loc.fix.longitude) == pytest.approx(positions[loc.place_id])
    # one feedback per round: rounds 0..R, the question of each round, none after the last
    feedback = person.feedback[did]
    assert [fb.round for fb in feedback] == list(range(final.round + 1))
    assert [fb.question.text for fb in feedback[:-1]] == list(result.questions)
    assert feedback[-1].question.text == ""
    covered = min(graph.node("dialogue_manager").config.top_k, len(places))  # the belief's
    for fb in feedback:
        beliefs = [c.belief for c in fb.candidates]
        assert len(beliefs) == covered and beliefs == sorted(beliefs, reverse=True)
        assert 0.99 < sum(beliefs) < 1.01
        assert all(fb.question.probe.kind for fb in feedback[:-1])
    assert feedback[-1].candidates[0].belief == pytest.approx(final.confidence, abs=1e-6)


def test_cancel_mid_dialogue(graph: Graph, probe: Probe, person: Person, city: Any) -> None:
    _, places, _ = city
    place = places["Testville:11"]
    handle = person.send(place.caption, place, answer=False)  # the person never answers
    assert graph.run_until(lambda: any(person.feedback.get(d) for d in _ids_of(probe, place)), 20)
    did = next(d for d in _ids_of(probe, place) if person.feedback.get(d))
    last = probe.last(did)
    assert last is not None and last.phase == DialogueState.PHASE_AWAITING_ANSWER
    cancel = handle.cancel_goal_async()
    assert graph.run_until(cancel.done, 10)
    assert len(cancel.result().goals_canceling) == 1
    response = person.result(handle, 20)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.status == DialogueState.STATUS_CANCELLED
    assert response.result.dialogue_id == did
    assert response.result.localization.place_id == ""  # a cancelled dialogue claims no place
    final = probe.last(did)
    assert final is not None and final.done and final.status == DialogueState.STATUS_CANCELLED
    assert "cancelled" in final.detail
    assert did not in probe.localizations


def test_two_goals_are_two_dialogues(person: Person, city: Any) -> None:
    _, places, _ = city
    targets = [places["Testville:7"], places["Testville:25"]]
    handles = [person.send(p.caption, p) for p in targets]
    results = [person.result(h).result for h in handles]
    assert results[0].dialogue_id != results[1].dialogue_id
    for place, result in zip(targets, results, strict=True):
        assert result.status != DialogueState.STATUS_FAILED, result.detail
        user = FactUser(place)
        fb = person.feedback[result.dialogue_id]
        asked = [conversions.question_msg_to_core(f.question) for f in fb if f.question.text]
        assert list(result.history[1:]) == [user.answer(q) for q in asked]


def test_empty_description_claims_the_next_one_heard(
    graph: Graph, probe: Probe, person: Person, city: Any
) -> None:
    _, places, _ = city
    place = places["Testville:3"]
    listening = person.send("", place)
    # nothing was said yet: the goal waits; then someone describes a place (a spoken
    # description arrives as an utterance without a dialogue id)
    graph.run_until(lambda: False, 0.5)
    assert not listening.get_result_async().done()
    probe.say(place.caption)
    result = person.result(listening).result
    assert result.status != DialogueState.STATUS_FAILED, result.detail
    assert result.history[0] == place.caption.strip()
    # a listening goal that hears nothing can be cancelled
    idle = person.send("", None)
    cancel = idle.cancel_goal_async()
    assert graph.run_until(cancel.done, 10)
    response = person.result(idle, 10)
    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.dialogue_id == ""


def _ids_of(probe: Probe, place: PlaceAnnotation) -> list[str]:
    with probe.lock:
        return [
            did
            for did, states in probe.states.items()
            if states and states[0].history and states[0].history[0] == place.caption.strip()
        ]


def test_a_refused_description_says_why(person: Person) -> None:
    """The result of a goal whose description the manager refuses names the problem (too
    long here; too many live dialogues names max_live_dialogues), not just "refused"."""
    handle = person.send("x" * 20_000, None)
    response = person.result(handle, 10)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert response.result.status == DialogueState.STATUS_FAILED
    assert response.result.detail == "utterance too long: 20000 bytes > 10000"
