"""Every dlgpr_ros message survives a publish/subscribe round trip over real DDS.

The values are deliberately non-default (unicode, extreme floats, nested arrays) so that
a field dropped or mis-typed in a .msg file shows up as a mismatch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# No importorskip: without rclpy or the built messages this must fail, not pass quietly
# (`make setup` installs the ROS wheels and colcon-builds dlgpr_ros).
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from dlgpr_ros.msg import (
    CandidateList,
    CandidatePlace,
    DialogueState,
    Localization,
    Question,
    Utterance,
)

pytestmark = pytest.mark.ros


def _header(frame: str = "map") -> Header:
    h = Header()
    h.stamp.sec = 1_764_000_000
    h.stamp.nanosec = 123_456_789
    h.frame_id = frame
    return h


def _candidate(rank: int) -> CandidatePlace:
    return CandidatePlace(
        place_id=f"Synthville:{rank * 7}",
        score=1.0 / rank,
        rank=rank,
        latitude=-33.868820 + rank * 1e-6,
        longitude=151.209296,
        image_uri=f"Images/Synthville/img_{rank}.jpg",
    )


def _fix() -> NavSatFix:
    fix = NavSatFix(header=_header("gps"), latitude=48.858370, longitude=2.294481, altitude=35.0)
    fix.status.status = NavSatStatus.STATUS_FIX
    fix.status.service = NavSatStatus.SERVICE_GPS
    fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
    return fix


def _examples() -> list[Any]:
    return [
        Utterance(
            header=_header(),
            dialogue_id="d-1",
            round=0,
            text="Une banque rouge, with a phone booth beside it — café sign ☕",
            source=Utterance.SOURCE_SPEECH,
            confidence=0.87,
            language="en",
        ),
        CandidateList(
            header=_header(),
            dialogue_id="d-1",
            round=2,
            query_text="a bank with a phone booth. the awning is green.",
            encoder="dlgpr-lite:abc123",
            candidates=[_candidate(r) for r in range(1, 11)],
        ),
        Question(
            header=_header(),
            dialogue_id="d-1",
            round=2,
            text="Is there a fountain across the street?",
            reasoning="<think>two of three candidates have a fountain</think>",
            questioner="info-gain",
            fallback=False,
        ),
        DialogueState(
            header=_header(),
            dialogue_id="d-1",
            round=3,
            status=DialogueState.STATUS_CONFIDENT,
            done=True,
            detail="belief 0.93 >= 0.9",
            history=["a bank with a phone booth", "yes, a green awning", "no fountain"],
            last_question="Is there a fountain across the street?",
            candidates=[_candidate(r) for r in range(1, 4)],
            best_place_id="Synthville:7",
            confidence=0.93,
            position=_fix(),
        ),
        Localization(
            header=_header(),
            dialogue_id="d-1",
            rounds_used=3,
            place_id="Synthville:7",
            confidence=0.93,
            confident=True,
            fix=_fix(),
        ),
    ]


def _same(a: Any, b: Any) -> bool:
    """Field-wise equality that also works for float32 fields and numpy arrays."""
    if hasattr(a, "get_fields_and_field_types"):
        return type(a) is type(b) and all(
            _same(getattr(a, f), getattr(b, f)) for f in a.get_fields_and_field_types()
        )
    if isinstance(a, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a))
    if isinstance(a, (list, tuple)) or hasattr(a, "tolist"):
        a_list, b_list = list(a), list(b)
        return len(a_list) == len(b_list) and all(
            _same(x, y) for x, y in zip(a_list, b_list, strict=True)
        )
    return bool(a == b)


@pytest.fixture(scope="module")
def ros() -> Iterator[None]:
    rclpy.init()
    yield
    rclpy.shutdown()


def _spin_until(
    ex: SingleThreadedExecutor, done: Callable[[], bool], act: Callable[[], None]
) -> None:
    deadline = time.monotonic() + 15.0
    while not done() and time.monotonic() < deadline:
        act()
        ex.spin_once(timeout_sec=0.05)


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: type(m).__name__)
def test_round_trip_over_dds(ros: None, msg: Any) -> None:
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    talker, listener = Node("dlgpr_test_talker"), Node("dlgpr_test_listener")
    received: list[Any] = []
    topic = f"/dlgpr_test/{type(msg).__name__.lower()}"
    pub = talker.create_publisher(type(msg), topic, qos)
    listener.create_subscription(type(msg), topic, received.append, qos)
    ex = SingleThreadedExecutor()
    ex.add_node(talker)
    ex.add_node(listener)
    try:
        _spin_until(ex, lambda: bool(received), lambda: pub.publish(msg))
    finally:
        ex.shutdown()
        talker.destroy_node()
        listener.destroy_node()
    assert received, f"no {type(msg).__name__} arrived within 15 s"
    assert _same(msg, received[0]), f"{msg}\n!=\n{received[0]}"


def test_round_trip_across_processes(ros: None) -> None:
    """A message published by another process arrives: DDS discovery, not in-process delivery."""
    script = textwrap.dedent(
        """
        import time, rclpy
        from dlgpr_ros.msg import Utterance
        rclpy.init()
        node = rclpy.create_node("dlgpr_test_remote_talker")
        pub = node.create_publisher(Utterance, "/dlgpr_test/remote", 10)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            pub.publish(Utterance(dialogue_id="remote", text="across processes"))
            time.sleep(0.05)
        """
    )
    listener = Node("dlgpr_test_remote_listener")
    received: list[Utterance] = []
    listener.create_subscription(Utterance, "/dlgpr_test/remote", received.append, 10)
    ex = SingleThreadedExecutor()
    ex.add_node(listener)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        _spin_until(ex, lambda: bool(received), lambda: None)
    finally:
        proc.kill()
        proc.wait()
        ex.shutdown()
        listener.destroy_node()
    assert received and received[0].text == "across processes"


def test_conversions_from_core_results() -> None:
    """Map search results become messages with every field carried over."""
    from builtin_interfaces.msg import Time

    from dlgpr_core.mapdb.report import PlaceHit
    from dlgpr_ros.conversions import candidate_list, navsatfix

    hits = [
        PlaceHit(
            1, 0.91, "Synthville:4", 48.1, 11.5, "Images/Synthville/a.jpg", 7, "Synthville", "/data"
        ),
        PlaceHit(
            2, 0.52, "Synthville:9", 48.2, 11.6, "Images/Synthville/b.jpg", 3, "Synthville", "/data"
        ),
    ]
    stamp = Time(sec=5, nanosec=6)
    msg = candidate_list(
        hits, dialogue_id="d", round_=2, query_text="q", encoder="enc", stamp=stamp
    )
    assert (msg.dialogue_id, msg.round, msg.header.stamp.sec) == ("d", 2, 5)
    assert [c.place_id for c in msg.candidates] == ["Synthville:4", "Synthville:9"]
    assert [c.rank for c in msg.candidates] == [1, 2]
    assert msg.candidates[0].image_uri == "Images/Synthville/a.jpg"
    assert abs(msg.candidates[1].score - 0.52) < 1e-6
    fix = navsatfix(48.1, 11.5, stamp)
    assert fix.status.status == NavSatStatus.STATUS_FIX and fix.latitude == 48.1
    assert navsatfix(None, None, stamp).status.status == NavSatStatus.STATUS_NO_FIX
