"""What people and crashing peers do wrong: the manager reports it and keeps its dialogues.

Each bad input must yield a FAILED DialogueState naming the problem for that id (or a
counted, logged rejection when there is no id), and the graph must still run a normal
dialogue afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_ros_graph import (
    Probe,
    build_map,
    core_dialogues,
    graph_overrides,
    run_dialogue,
    wait_connected,
)

from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.msg import DialogueState

pytestmark = pytest.mark.ros
FAILED = DialogueState.STATUS_FAILED


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Any:
    return build_map(tmp_path_factory.mktemp("rosbad"))


@pytest.fixture(scope="module")
def graph(city: Any) -> Iterator[Graph]:
    overrides = graph_overrides(city[0], request_timeout=1.0, max_resends=3)
    with bringup(None, overrides, "typed", simulate=True) as g:
        yield g


@pytest.fixture(scope="module")
def probe(graph: Graph) -> Probe:
    p = Probe(graph)
    wait_connected(graph, p)
    return p


def _failed(graph: Graph, probe: Probe, did: str, words: str) -> DialogueState:
    assert graph.run_until(lambda: (s := probe.last(did)) is not None and s.status == FAILED, 10), (
        f"no FAILED state for {did}: {probe.last(did)}"
    )
    state = probe.last(did)
    assert state is not None and state.done and words in state.detail, state
    return state


def test_unknown_dialogue_id(graph: Graph, probe: Probe) -> None:
    probe.say("yes, it is red", "no-such-dialogue", 1)
    _failed(graph, probe, "no-such-dialogue", "unknown dialogue id")


def test_empty_and_huge_utterances(graph: Graph, probe: Probe, city: Any) -> None:
    dm = graph.node("dialogue_manager")
    rejected = dm.counters["rejected"]
    probe.say("   ")
    probe.say("x" * 10_000_000)  # 10 MB, no id: logged and counted
    assert graph.run_until(lambda: dm.counters["rejected"] >= rejected + 2, 30)
    assert "" not in probe.states
    # With an id: the dialogue ends with a detail naming the problem, others go on.
    sim = graph.node("simulated_user")
    for target, text, words in (
        ("Testville:4", "   ", "empty utterance"),
        ("Testville:9", "y" * 10_000_000, "utterance too long"),
    ):
        sim.start(target)
        assert graph.run_until(lambda: sim.dialogue_of(target) is not None, 10)  # noqa: B023
        did = sim.dialogue_of(target)
        assert did is not None
        probe.say(text, did)
        state = _failed(graph, probe, did, words)
        assert state.history[0] == city[1][target].caption.strip()
    did = run_dialogue(graph, probe, "Testville:2")
    assert probe.last(did).status != FAILED


def test_answer_to_finished_dialogue(graph: Graph, probe: Probe) -> None:
    did = run_dialogue(graph, probe, "Testville:6")
    final = probe.last(did)
    assert final is not None and final.status != FAILED
    probe.say("one more thing", did, final.round + 1)
    _failed(graph, probe, did, "already finished")
    # The finished dialogue itself keeps its outcome.
    assert graph.node("dialogue_manager").sessions.get(did).state.status == final.status


def test_questioner_restart_mid_dialogue(graph: Graph, probe: Probe, city: Any) -> None:
    """The questioner dies after the first question; a new one continues the dialogue from
    the re-sent state, without repeating what its predecessor asked.

    The target is a place whose dialogue asks the most questions (as the in-process engine
    runs it with the graph's settings): one that ends confidently after the first answer
    would need no further question, and so no re-send, whenever the questioner dies."""
    core = core_dialogues(city[0], city[1])
    target = max(sorted(core), key=lambda pid: len(core[pid].final.questions))
    assert len(core[target].final.questions) >= 3, "no place on this map needs 3 questions"
    sim = graph.node("simulated_user")
    sim.start(target)
    assert graph.run_until(lambda: sim.dialogue_of(target) is not None, 10)
    did = sim.dialogue_of(target)
    assert did is not None
    assert graph.run_until(lambda: len(probe.questions.get(did, [])) >= 1, 15)
    graph.stop("questioner")
    try:
        dm = graph.node("dialogue_manager")
        resends = dm.counters["resends"]
        assert graph.run_until(lambda: dm.counters["resends"] > resends, 10)
    finally:
        graph.start("questioner")  # the next tests need it, whatever happened here
    assert graph.run_until(lambda: (s := probe.last(did)) is not None and s.done, 40)
    final = probe.last(did)
    assert final is not None and final.status != FAILED, final.detail
    assert len(final.questions) >= 2
    assert len(set(final.questions)) == len(final.questions)


def test_questioner_gone_fails_clearly(graph: Graph, probe: Probe) -> None:
    graph.stop("questioner")
    try:
        sim = graph.node("simulated_user")
        sim.start("Testville:15")
        assert graph.run_until(lambda: sim.dialogue_of("Testville:15") is not None, 10)
        did = sim.dialogue_of("Testville:15")
        assert did is not None
        state = _failed(graph, probe, did, "no question from the questioner node")
        assert "after 4 tries" in state.detail
    finally:
        graph.start("questioner")
    did = run_dialogue(graph, probe, "Testville:16")
    assert probe.last(did).status != FAILED
