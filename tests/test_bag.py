"""rosbag2 MCAP recording, reading, replay and comparison (dlgpr_ros.bag) over real DDS.

A bag is only useful if tools other than ours read it, so the recorded file is read back
three ways: rosbags with our typestore, rosbags with nothing but the definitions embedded in
the bag (what Foxglove or `ros2 bag` on another machine has), and a minimal MCAP record parser
that looks at the channel schemas directly.
"""

from __future__ import annotations

import copy
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import NavSatFix, NavSatStatus

from dlgpr_ros.bag import (
    BagMessage,
    BagRecorder,
    compare,
    dlgpr_typestore,
    read_bag,
    replay,
    type_name,
)
from dlgpr_ros.msg import CandidatePlace, DialogueState, Question, Utterance

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("single_thread")]

NS = "/bag_test"
QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
FIXTURE = Path(__file__).parent / "fixtures" / "typed_dialogue"
TOPICS: list[tuple[str, Any]] = [
    ("utterance", Utterance),
    ("question", Question),
    ("dialogue_state", DialogueState),
]


def _wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Spinner:
    """Nodes spun on a background thread, so replay() can block the test thread."""

    def __init__(self, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor()
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def ros() -> Iterator[None]:
    rclpy.init()
    yield
    rclpy.shutdown()


def _messages() -> list[tuple[str, Any]]:
    fix = NavSatFix(latitude=48.85837, longitude=2.294481, altitude=35.0)
    fix.status.status = NavSatStatus.STATUS_FIX
    state = DialogueState(
        dialogue_id="d-1",
        round=1,
        status=DialogueState.STATUS_CONFIDENT,
        done=True,
        detail="belief 0.93 >= 0.9",
        history=["a bank with a phone booth", "yes, a green awning"],
        questions=["Is there an awning?"],
        last_question="Is there an awning?",
        candidates=[
            CandidatePlace(place_id=f"Synthville:{r}", score=1.0 / r, rank=r, latitude=48.1)
            for r in range(1, 4)
        ],
        best_place_id="Synthville:1",
        confidence=0.93,
        position=fix,
    )
    return [
        (
            "utterance",
            Utterance(
                dialogue_id="", text="Une banque — café ☕", source=1, confidence=0.8, language="en"
            ),
        ),
        (
            "question",
            Question(
                dialogue_id="d-1",
                round=0,
                text="Is there an awning?",
                questioner="info-gain",
                fallback=True,
            ),
        ),
        (
            "utterance",
            Utterance(
                dialogue_id="d-1",
                round=1,
                text="yes, a green awning",
                confidence=1.0,
                language="en",
            ),
        ),
        ("dialogue_state", state),
    ]


@pytest.fixture(scope="module")
def recorded(ros: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Publish the messages over DDS and record them; returns the bag and what was sent."""
    path = tmp_path_factory.mktemp("bags") / "dialogue"
    talker = Node("bag_test_talker", namespace=NS)
    listener = Node("bag_test_recorder", namespace=NS)
    pubs = {t: talker.create_publisher(c, t, QOS) for t, c in TOPICS}
    spinner = Spinner(talker, listener)
    sent = _messages()
    try:
        with BagRecorder(listener, path, TOPICS) as rec:
            assert _wait(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()))
            for i, (topic, msg) in enumerate(sent):
                msg.header.stamp.sec, msg.header.stamp.nanosec = 1_764_000_000 + i, 5
                pubs[topic].publish(msg)
                time.sleep(0.05)  # distinct receive times, and cross-topic order kept
            assert _wait(lambda: rec.count == len(sent)), rec.count
    finally:
        spinner.close()
        talker.destroy_node()
        listener.destroy_node()
    return path, [BagMessage(f"{NS}/{t}", type_name(type(m)), 0, m) for t, m in sent]


def _mcap_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, content) of an MCAP file's records, descending into uncompressed chunks; just
    enough of https://mcap.dev/spec to find schemas without the mcap package."""
    magic = b"\x89MCAP0\r\n"
    assert data[:8] == magic and data[-8:] == magic
    pos, end = 8, len(data) - 8
    while pos < end:
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        body = data[pos + 9 : pos + 9 + length]
        pos += 9 + length
        yield op, body
        if op == 0x06:  # Chunk
            (clen,) = struct.unpack_from("<I", body, 28)
            compression = body[32 : 32 + clen].decode()
            (rlen,) = struct.unpack_from("<Q", body, 32 + clen)
            if compression == "":
                inner = body[40 + clen : 40 + clen + rlen]
                yield from _mcap_records(magic + inner + magic)


def _mcap_schemas(path: Path) -> dict[str, tuple[str, str]]:
    """schema name -> (encoding, definition text)."""
    out: dict[str, tuple[str, str]] = {}
    for op, body in _mcap_records(path.read_bytes()):
        if op != 0x03:
            continue
        pos = 2  # id: uint16
        fields: list[bytes] = []
        for _ in range(3):  # name, encoding, data: uint32-length-prefixed
            (n,) = struct.unpack_from("<I", body, pos)
            fields.append(body[pos + 4 : pos + 4 + n])
            pos += 4 + n
        out[fields[0].decode()] = (fields[1].decode(), fields[2].decode())
    return out


def test_recorded_bag_reads_back_with_rosbags_and_read_bag(recorded):
    path, sent = recorded
    mcap = path / f"{path.name}.mcap"
    assert mcap.is_file() and (path / "metadata.yaml").is_file()

    # 1) rosbags with the dlgpr typestore
    from rosbags.rosbag2 import Reader

    store = dlgpr_typestore()
    with Reader(path) as reader:
        got: list[tuple[str, str, Any]] = [
            (c.topic, c.msgtype, store.deserialize_cdr(d, c.msgtype))
            for c, _, d in reader.messages()
        ]
    assert [(t, m) for t, m, _ in got] == [(s.topic, s.msgtype) for s in sent]
    assert got[0][2].text == "Une banque — café ☕"
    assert got[3][2].candidates[2].place_id == "Synthville:3"
    assert got[3][2].position.status.status == NavSatStatus.STATUS_FIX

    # 2) rosbags knowing nothing of dlgpr_ros: only the definitions embedded in the bag
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        anon: list[Any] = [reader.deserialize(d, c.msgtype) for c, _, d in reader.messages()]
    assert anon[1].questioner == "info-gain" and anon[1].fallback is True
    assert abs(anon[3].confidence - 0.93) < 1e-6

    # 3) our reader: rclpy messages equal to what was published, field for field
    back = read_bag(path)
    assert compare(sent, back, ignore=()) == []
    assert back[0].t_ns < back[1].t_ns < back[2].t_ns < back[3].t_ns
    assert compare(sent, read_bag(mcap), ignore=()) == []  # the .mcap file alone works too


def test_message_definitions_are_embedded_in_the_mcap(recorded):
    path, _ = recorded
    schemas = _mcap_schemas(path / f"{path.name}.mcap")
    assert set(schemas) >= {
        "dlgpr_ros/msg/Utterance",
        "dlgpr_ros/msg/Question",
        "dlgpr_ros/msg/DialogueState",
    }
    enc, text = schemas["dlgpr_ros/msg/DialogueState"]
    assert enc == "ros2msg"
    assert "string dialogue_id" in text and "string[] questions" in text
    # dependencies are embedded too, so a reader needs no ROS install at all
    assert "MSG: dlgpr_ros/CandidatePlace" in text and "MSG: sensor_msgs/NavSatFix" in text
    assert "MSG: std_msgs/Header" in schemas["dlgpr_ros/msg/Utterance"][1]


def test_type_hashes_match_the_live_types(recorded, ros):
    """`ros2 bag play` on a full install checks the recorded type hash against the live one."""
    import yaml

    path, _ = recorded
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    hashes = {
        t["topic_metadata"]["type"]: t["topic_metadata"]["type_description_hash"]
        for t in meta["topics_with_message_count"]
    }
    node = Node("bag_test_hash", namespace=NS)
    try:
        for topic, cls in TOPICS:
            node.create_publisher(cls, f"hash/{topic}", QOS)
            (info,) = node.get_publishers_info_by_topic(f"{NS}/hash/{topic}")
            assert str(info.topic_type_hash) == hashes[type_name(cls)], topic
    finally:
        node.destroy_node()


def test_replay_into_a_subscriber_and_compare(recorded, ros):
    path, _ = recorded
    bag = read_bag(path)
    player = Node("bag_test_player", namespace=NS)
    sink = Node("bag_test_sink", namespace="/bag_test_replayed")
    observed: list[BagMessage] = []
    lock = threading.Lock()

    def keep(topic: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with lock:
                observed.append(BagMessage(topic, type_name(type(msg)), 0, msg))

        return cb

    for topic, cls in TOPICS:
        sink.create_subscription(cls, topic, keep(f"{NS}/{topic}"), QOS)
    spinner = Spinner(player, sink)
    remap = {f"{NS}/{t}": f"/bag_test_replayed/{t}" for t, _ in TOPICS}
    try:
        t0 = time.monotonic()
        n = replay(bag, player, remap, rate=None, remap=remap)
        fast = time.monotonic() - t0
        assert n == len(bag)
        assert _wait(lambda: len(observed) == len(bag))
        assert compare(bag, observed) == []

        # at rate=1 the recorded gaps (>= 3 x 50 ms) are kept: a lower bound only
        with lock:
            observed.clear()
        t0 = time.monotonic()
        replay(bag, player, remap, rate=1.0, remap=remap)
        span = (bag[-1].t_ns - bag[0].t_ns) / 1e9
        assert time.monotonic() - t0 >= 0.9 * span
        assert _wait(lambda: len(observed) == len(bag))
        assert compare(bag, observed) == []
        print(f"replayed {n} messages as fast as possible in {fast:.3f} s; bag span {span:.3f} s")
    finally:
        spinner.close()
        player.destroy_node()
        sink.destroy_node()

    # a deliberately altered message is reported, with the field that changed
    altered = [BagMessage(m.topic, m.msgtype, m.t_ns, m.msg) for m in observed]
    state = copy.deepcopy(altered[3].msg)
    state.candidates[1] = CandidatePlace(place_id="Elsewhere:9", rank=2, score=0.5)
    altered[3] = BagMessage(altered[3].topic, altered[3].msgtype, 0, state)
    diffs = compare(bag, altered)
    assert any("candidates[1].place_id" in d and "Elsewhere:9" in d for d in diffs), diffs
    assert all(d.startswith(f"{NS}/dialogue_state#0 ") for d in diffs), diffs
    # missing messages are reported per topic
    assert compare(bag, altered[:2]) == [
        f"{NS}/dialogue_state: 1 recorded != 0 observed",
        f"{NS}/utterance: 2 recorded != 1 observed",
    ]
    # header stamps differ between runs by construction and are ignored by default ...
    restamped = Utterance(text=bag[0].msg.text, source=1, confidence=0.8, language="en")
    restamped.header.stamp.sec = 42
    assert compare([bag[0].msg], [restamped]) == []
    # ... unless asked for, and any field can be ignored by pattern
    assert compare([bag[0].msg], [restamped], ignore=()) == [
        f"#0 header.stamp.sec: {bag[0].msg.header.stamp.sec} != 42",
        "#0 header.stamp.nanosec: 5 != 0",
    ]
    assert compare(bag, altered, ignore=("candidates[*].*",)) == [
        d for d in diffs if "candidates" not in d
    ]


def test_typed_dialogue_fixture_replays_through_the_speech_node(ros):
    """Regression: the committed typed dialogue (inputs and the utterances the speech node
    published for them) still comes out the same. Typed text needs no Whisper, so the
    node gets an empty pipeline and starts in milliseconds."""
    from typing import cast

    from dlgpr_core.speech.pipeline import SpeechPipeline
    from dlgpr_ros.speech_node import SpeechNode

    bag = read_bag(FIXTURE)
    assert {m.topic for m in bag} == {"/typed_text", "/utterance", "/dialogue_state"}
    ns = "/bag_test_fixture"
    speech = SpeechNode(
        pipeline=SpeechPipeline(cast(Any, None), cast(Any, None)),
        namespace=ns,
        parameter_overrides=[rclpy.parameter.Parameter("warmup", value=False)],
    )
    player = Node("bag_test_fixture_player", namespace=ns)
    spinner = Spinner(speech, player)
    inputs = ["/typed_text", "/dialogue_state"]
    try:
        observed: list[Any] = []
        player.create_subscription(Utterance, f"{ns}/utterance", observed.append, QOS)
        assert _wait(lambda: speech.count_subscribers(f"{ns}/utterance") > 0)
        replay(bag, player, inputs, rate=1.0, remap={t: f"{ns}{t}" for t in inputs})
        expected = [m.msg for m in bag if m.topic == "/utterance"]
        assert _wait(lambda: len(observed) == len(expected))
        assert compare(expected, observed) == []
        assert _wait(lambda: speech.awaiting is None)  # the final (done) dialogue_state
    finally:
        spinner.close()
        player.destroy_node()
        speech.destroy_node()
