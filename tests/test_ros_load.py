"""Load and faults through the real graph over DDS, at a reduced size (seconds each).

Many simulated people at once (`SoakUser`: each dialogue answered from its place's
annotations, only outcomes kept), a flood of descriptions nobody answers, a retrieval node
cleaned up under a running search, a callback that raises, a hostile request, and a node
process killed and restarted mid-dialogue. Every accepted description must end in a
question or a final state, none may be lost, and the graph must keep answering.
`benchmarks/bench_soak.py` runs the full sizes (1,000 dialogues, 100 at once, 10,000
descriptions).

The graph asks with the random questioner (milliseconds a question; info-gain costs ~50 ms,
which at these sizes only makes the run longer) over oracle evidence, and every dialogue runs
its two rounds (confidence 1.0 never stops one early): the same work per dialogue, and a
second question that a killed questioner must still ask.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from test_ros_graph import build_map, graph_overrides

from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.msg import CandidateList, DialogueState, RetrievalRequest
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.soak_user import SoakUser

pytestmark = pytest.mark.ros
SUCCESS = TransitionCallbackReturn.SUCCESS
LOCALIZED = {"max_rounds"}
"""How every dialogue of these graphs ends: two rounds, a place named."""


def rss_bytes() -> int:
    """Resident memory of this process (the whole graph runs in it)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def slope(ys: Sequence[float]) -> float:
    """Least-squares slope of `ys` against 0, 1, 2, ..."""
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Any:
    return build_map(tmp_path_factory.mktemp("rosload"))


def load_overrides(map_path: Path, **more: Any) -> dict[str, Any]:
    fixed = {"questioner.questioner": "random", "max_rounds": 2, "confidence": 1.0}
    return graph_overrides(map_path, **{**fixed, "request_timeout": 1.0, **more})


@pytest.fixture(scope="module")
def graph(city: Any) -> Iterator[Graph]:
    overrides = load_overrides(city[0], max_resends=20, answer_timeout=30.0)
    with bringup(None, overrides, "typed", print_dialogue=False) as g:
        yield g


def add_user(graph: Graph, places: Any, name: str, **kwargs: Any) -> SoakUser:
    dm = graph.node("dialogue_manager")
    listeners = dm._state_pub.get_subscription_count()
    user = SoakUser(places, name, context=graph.context, namespace=graph.namespace, **kwargs)
    graph.add(user)
    assert graph.run_until(
        lambda: (
            user._pub.get_subscription_count() >= 1
            and dm._state_pub.get_subscription_count() > listeners
        ),
        10,
    ), "the user never matched the dialogue manager"
    return user


@pytest.fixture(scope="module")
def user(graph: Graph, city: Any) -> SoakUser:
    return add_user(graph, city[1], "soak_user")


def run(graph: Graph, user: SoakUser, targets: list[str], timeout: float = 60.0) -> None:
    """Starts a dialogue per target at once and waits until every one has ended."""
    for t in targets:
        user.start(t)
    assert graph.run_until(lambda: user.open == 0, timeout), (
        f"{user.open} dialogues never ended: {dict(user.tally)}"
    )


def assert_localized(user: SoakUser, n: int) -> None:
    """The last `n` outcomes are complete dialogues (a place named, no failure)."""
    last = list(user.outcomes)[-n:]
    assert len(last) == n
    bad = [o for o in last if o.status not in LOCALIZED]
    assert not bad, bad[:3]


def test_soak_ends_every_dialogue_with_flat_memory(graph: Graph, user: SoakUser, city: Any) -> None:
    """Dialogue after dialogue, eight at a time: each ends localised, the manager holds none
    of them live afterwards, and memory stops growing once warm."""
    places = sorted(city[1])
    dm = graph.node("dialogue_manager")
    run(graph, user, places[:16])  # warm-up: caches, DDS histories, allocator arenas
    samples = []
    for batch in range(5):
        run(graph, user, [places[(batch * 8 + i) % len(places)] for i in range(8)])
        gc.collect()
        samples.append(rss_bytes())
    assert_localized(user, 16 + 40)
    assert dm.sessions.live == 0 and dm.sessions.requests() == (0, 0)
    assert graph.callback_errors == 0
    per_dialogue = slope(samples) / 8
    print(f"\nsoak: RSS {samples[0] / 2**20:.1f} -> {samples[-1] / 2**20:.1f} MiB, "
          f"slope {per_dialogue / 1024:.1f} KiB per dialogue")  # fmt: skip
    assert per_dialogue < 64 * 1024, [s / 2**20 for s in samples]


def test_a_hundred_dialogues_at_once(graph: Graph, user: SoakUser, city: Any) -> None:
    """A burst: the manager holds back what the retrieval node and the questioner cannot take
    yet, so nobody is timed out for waiting and every dialogue ends localised."""
    places = sorted(city[1])
    dm = graph.node("dialogue_manager")
    held = dm.counters["requests_held"]
    run(graph, user, [places[i % len(places)] for i in range(100)], timeout=120.0)
    assert_localized(user, 100)
    assert dm.counters["requests_held"] > held  # the burst was queued in the manager
    assert dm.sessions.live == 0


def test_a_flood_of_descriptions_is_capped_and_refused_clearly(city: Any) -> None:
    """Descriptions nobody answers, far beyond the cap: at most max_live_dialogues run, the
    rest get a FAILED state naming the cap, every accepted one reaches its question and
    then ends on the answer time-out. Nothing is left running."""
    overrides = load_overrides(city[0], max_live_dialogues=20, answer_timeout=2.0, max_resends=20)
    with bringup(None, overrides, "typed", print_dialogue=False, namespace="flood") as graph:
        flood = add_user(graph, city[1], "flood_user", answer=False)
        dm = graph.node("dialogue_manager")
        places = sorted(city[1])
        live_max = 0
        sent = 0
        for burst in range(8):  # 8 x 50: paced so that the DDS queues lose nothing
            for i in range(50):
                flood.start(places[(burst * 50 + i) % len(places)])
            sent += 50
            c = dm.counters
            assert graph.run_until(lambda: c["started"] + c["refused_full"] == sent, 20)  # noqa: B023
            live_max = max(live_max, dm.sessions.live)
        assert graph.run_until(lambda: flood.open == 0, 30), dict(flood.tally)
        c, tally = dm.counters, flood.tally
        assert live_max <= 20 and c["started"] >= 20
        assert c["started"] + c["refused_full"] == 400 and tally["refused"] == c["refused_full"]
        refusal = next(o for o in flood.outcomes if o.status == "refused")
        assert "max_live_dialogues=20" in refusal.detail and "answer_timeout 2 s" in refusal.detail
        # every accepted description was asked its question, then ended on the time-out
        assert tally["questions"] == c["started"] == tally["failed"]
        ended = [o for o in flood.outcomes if o.status == "failed"]
        # (the final state lists answered questions; the detail names the unanswered one)
        assert all(o.detail.startswith("no answer to '") for o in ended), ended[:2]
        assert dm.sessions.live == 0 and graph.callback_errors == 0


def test_a_search_in_flight_during_cleanup_does_not_raise(
    graph: Graph, user: SoakUser, city: Any
) -> None:
    """A lifecycle manager cleans the retrieval node up while it searches: the clean-up
    waits for the search, nothing raises, and once re-activated the manager's re-send
    completes the dialogue."""
    retrieval = graph.node("retrieval")
    errors, callback_errors = retrieval.counters["errors"], graph.callback_errors
    entered, release = threading.Event(), threading.Event()
    db = retrieval._db
    search = db.search

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(20.0)
        return search(*args, **kwargs)

    db.search = gated
    user.start(sorted(city[1])[3])
    assert entered.wait(15.0), "no search started"
    results: list[Any] = []
    cleanup = threading.Thread(
        target=lambda: results.extend([retrieval.trigger_deactivate(), retrieval.trigger_cleanup()])
    )
    cleanup.start()
    time.sleep(0.5)  # the clean-up is under way while the search runs
    release.set()
    cleanup.join(20.0)
    assert results == [SUCCESS, SUCCESS]
    assert retrieval.counters["errors"] == errors and graph.callback_errors == callback_errors
    assert retrieval.trigger_configure() == SUCCESS and retrieval.trigger_activate() == SUCCESS
    assert graph.run_until(lambda: user.open == 0, 30), dict(user.tally)
    assert_localized(user, 1)


def test_a_callback_that_raises_does_not_stop_the_graph(
    graph: Graph, user: SoakUser, city: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """rclpy re-raises a callback's exception in the spinning thread: bringup logs and counts
    it and spins on, so the other nodes keep answering."""

    def boom(msg: DialogueState) -> None:
        raise RuntimeError(f"faulty listener got {msg.dialogue_id}")

    dm = graph.node("dialogue_manager")
    listeners = dm._state_pub.get_subscription_count()
    faulty = Node("dlgpr_faulty_listener", context=graph.context)
    faulty.create_subscription(DialogueState, "dialogue_state", boom, TOPIC_QOS["dialogue_state"])
    graph.add(faulty)
    try:
        assert graph.run_until(lambda: dm._state_pub.get_subscription_count() > listeners, 10)
        before = graph.callback_errors
        with caplog.at_level(logging.ERROR, logger="dlgpr_ros.bringup"):
            run(graph, user, sorted(city[1])[5:8])
        assert_localized(user, 3)
        assert graph.callback_errors > before
        assert "a callback raised RuntimeError: faulty listener got dlg-" in caplog.text
    finally:
        graph.executor.remove_node(faulty)
        faulty.destroy_node()


def test_a_query_over_the_byte_limit_is_refused(graph: Graph) -> None:
    retrieval = graph.node("retrieval")
    node = Node("dlgpr_hostile_requester", context=graph.context)
    answers: list[str] = []
    node.create_subscription(
        CandidateList,
        "candidates",
        lambda m: answers.append(m.dialogue_id),
        TOPIC_QOS["candidates"],
    )
    pub = node.create_publisher(
        RetrievalRequest, "retrieval_request", TOPIC_QOS["retrieval_request"]
    )
    graph.add(node)
    try:
        assert graph.run_until(
            lambda: pub.get_subscription_count() >= 1 and node.count_publishers("/candidates") >= 1,
            10,
        )
        refused = retrieval.counters["query_too_long"]
        pub.publish(RetrievalRequest(dialogue_id="huge", query_text="x" * 200_000, k=5))
        pub.publish(RetrievalRequest(dialogue_id="fine", query_text="a red door", k=5))
        assert graph.run_until(lambda: "fine" in answers, 10)
        assert retrieval.counters["query_too_long"] == refused + 1 and "huge" not in answers
    finally:
        graph.executor.remove_node(node)
        node.destroy_node()


def questioner_process(map_path: Path) -> subprocess.Popen[bytes]:
    """The questioner as its own process, as `ros2 run dlgpr_ros questioner_node` starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "dlgpr_ros.questioner_node", "--ros-args",
         "-p", f"map_path:={map_path}", "-p", "evidence:=oracle", "-p", "questioner:=random"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_questioner_process_killed_and_restarted_mid_dialogue(
    graph: Graph, user: SoakUser, city: Any
) -> None:
    """Separate processes: the questioner process is killed while the person thinks about
    its first question; the manager re-sends the state it gets no second question for until
    a new questioner process answers (it starts in seconds), and the dialogue ends as any
    other, without repeating a question."""
    map_path, places, _ = city
    dm = graph.node("dialogue_manager")
    graph.stop("questioner")
    first = questioner_process(map_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        assert graph.run_until(lambda: dm.count_publishers("/question") == 1, 30), (
            "the questioner process never appeared"
        )
        asked = user.tally["questions"]
        user.answer = False
        owner = user.start(sorted(places)[9])
        assert graph.run_until(lambda: user.tally["questions"] > asked, 20)
        first.kill()
        first.wait(10)
        resends = dm.counters["resends"]
        user.answer = True
        assert user.answer_held() == 1
        second = questioner_process(map_path)
        assert graph.run_until(lambda: user.open == 0, 60), dict(user.tally)
        (outcome,) = [o for o in user.outcomes if o.owner == owner]
        assert outcome.status in LOCALIZED and outcome.questions == 2, outcome
        assert dm.counters["resends"] > resends  # the gap was bridged by re-sends
    finally:
        user.answer = True
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        graph.start("questioner")
