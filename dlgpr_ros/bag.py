"""rosbag2 (MCAP) recording, reading, replay and comparison without `ros2 bag`.

The ROS 2 wheels on PyPI carry neither `ros2 bag` nor `rosbag2_py`, yet a dialogue that went
wrong on the robot has to be captured and re-run on a desk. The pure-Python `rosbags` library
writes real rosbag2 MCAP files; the CDR bytes rclpy hands a raw subscription are exactly what a
bag stores, so recording never deserialises and replay publishes the very bytes that were
heard. The dlgpr message definitions are registered from the package's `.msg` files so they are
embedded in the bag's schemas: Foxglove, `ros2 bag` on a full install or `mcap` can read the
bag without this package.

Typical use::

    with BagRecorder(node, "run.mcap", [("utterance", Utterance), ("question", Question)]):
        executor.spin_until_future_complete(done)
    recorded = read_bag("run.mcap")
    replay(recorded, node, ["utterance"], rate=None)
    print(compare(recorded_outputs, observed_outputs))
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.subscription import Subscription
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.writer import StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

PACKAGE = "dlgpr_ros"

DEFAULT_IGNORE: tuple[str, ...] = ("header.stamp", "*.header.stamp")
"""Fields that differ between a recording and a re-run by construction (wall-clock stamps)."""

MsgType = type[Any]
TopicSpec = tuple[str, "MsgType | str"]


class BagMessage(NamedTuple):
    """One message read from a bag, already deserialised into its rclpy class."""

    topic: str
    msgtype: str
    """rosbag2 type name, e.g. ``"dlgpr_ros/msg/Utterance"``."""
    t_ns: int
    """Receive time (recorder's clock), nanoseconds."""
    msg: Any


# --------------------------------------------------------------------------------- types


def find_msg_dir() -> Path:
    """The built package's `msg/` wins over the source tree: the bag must describe the types
    rclpy actually serialises, and a source `.msg` edited but not rebuilt would not."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE)) / "msg"
        if any(share.glob("*.msg")):
            return share
    except (ImportError, LookupError, ValueError):
        pass
    src = Path(__file__).resolve().parent.parent / "msg"
    if any(src.glob("*.msg")):
        return src
    raise FileNotFoundError(
        f"no {PACKAGE} .msg files found (neither in the ament index nor beside {__file__})"
    )


def message_definitions(msg_dir: Path | None = None) -> dict[str, str]:
    """``{"dlgpr_ros/msg/Name": msg text}`` for every `.msg` file of the package."""
    d = msg_dir if msg_dir is not None else find_msg_dir()
    return {f"{PACKAGE}/msg/{p.stem}": p.read_text() for p in sorted(d.glob("*.msg"))}


def dlgpr_typestore(msg_dir: Path | None = None) -> Typestore:
    """Kilted's standard types plus the dlgpr messages, so the writer can embed full
    definitions (with std_msgs/sensor_msgs dependencies) and compute matching type hashes."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for name, text in message_definitions(msg_dir).items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def type_name(msg_type: MsgType | str) -> str:
    """Normalise a class or ``pkg/Name`` to rosbag2's ``pkg/msg/Name``."""
    if isinstance(msg_type, str):
        parts = msg_type.split("/")
        if len(parts) == 2:
            return f"{parts[0]}/msg/{parts[1]}"
        if len(parts) == 3:
            return msg_type
        raise ValueError(f"not a message type name: {msg_type!r}")
    pkg = msg_type.__module__.split(".")[0]
    return f"{pkg}/msg/{msg_type.__name__}"


def message_class(msg_type: MsgType | str) -> MsgType:
    """The rclpy class for a type name; rosidl_runtime_py (which does this) is not on PyPI."""
    if not isinstance(msg_type, str):
        return msg_type
    pkg, kind, name = type_name(msg_type).split("/")
    module = importlib.import_module(f"{pkg}.{kind}")
    cls: MsgType = getattr(module, name)
    return cls


def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


# ------------------------------------------------------------------------------ writing


class _BagFile:
    """A rosbag2 MCAP writer that adds one connection per topic on first use."""

    def __init__(self, path: str | Path, typestore: Typestore | None) -> None:
        self.path = Path(path)
        self.typestore = typestore if typestore is not None else dlgpr_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[tuple[str, str], Any] = {}
        self.count = 0

    def write(self, topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[key] = conn
        self._writer.write(conn, t_ns, data)
        self.count += 1

    def close(self) -> None:
        self._writer.close()


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, Any, int]],
    typestore: Typestore | None = None,
) -> int:
    """Write ``(topic, rclpy message, t_ns)`` to a new bag without any node or DDS traffic
    (fixtures, tests, converting logs); returns the number of messages written.

    rclpy's serialiser leaves CDR alignment padding uninitialised, so its bytes differ from
    run to run; each message is re-encoded by rosbags (zero padding, same decoded content)
    so that a regenerated fixture is byte-identical and shows up in a diff only when its
    content changed.
    """
    bag = _BagFile(path, typestore)
    store = bag.typestore
    try:
        for topic, msg, t_ns in messages:
            msgtype = type_name(type(msg))
            decoded = store.deserialize_cdr(serialize_message(msg), msgtype)
            bag.write(topic, msgtype, int(t_ns), bytes(store.serialize_cdr(decoded, msgtype)))
    finally:
        bag.close()
    return bag.count


class BagRecorder:
    """Record topics of a live ROS graph into a rosbag2 MCAP bag, like ``ros2 bag record``.

    Subscriptions are raw, so the bag holds byte-for-byte what DDS delivered. The recorder
    borrows ``node`` (whatever executor spins it drives the recording) and writes under a lock
    because a multi-threaded executor may call two topic callbacks at once. Messages are
    stamped with the node clock at receipt, as rosbag2 does. Close it (or use ``with``) to
    finish the MCAP footer; an unclosed bag is unreadable.
    """

    def __init__(
        self,
        node: Node,
        path: str | Path,
        topics: Sequence[TopicSpec],
        qos: QoSProfile | None = None,
        typestore: Typestore | None = None,
    ) -> None:
        self.node = node
        self._bag = _BagFile(path, typestore)
        self.path = self._bag.path
        self._lock = threading.Lock()
        self._closed = False
        self._subs: list[Subscription] = []
        profile = qos if qos is not None else _reliable(1000)
        for topic, msg_type in topics:
            cls = message_class(msg_type)
            # stored fully qualified, as `ros2 bag record` does, so the bag is unambiguous
            # whatever namespace the recording node had
            resolved = node.resolve_topic_name(topic)
            callback = self._callback(resolved, type_name(msg_type))
            self._subs.append(node.create_subscription(cls, topic, callback, profile, raw=True))

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            t_ns = self.node.get_clock().now().nanoseconds
            with self._lock:
                if not self._closed:
                    self._bag.write(topic, msgtype, t_ns, bytes(data))

        return on_message

    @property
    def count(self) -> int:
        """Messages written so far (to wait for in tests instead of sleeping)."""
        with self._lock:
            return self._bag.count

    def close(self) -> None:
        """Stop listening and finalise the file; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs.clear()
        with self._lock:
            self._bag.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------ reading


def read_bag_raw(path: str | Path) -> list[tuple[str, str, int, bytes]]:
    """``(topic, msgtype, t_ns, cdr bytes)`` in time order, without needing the types."""
    out: list[tuple[str, str, int, bytes]] = []
    with Reader(Path(path)) as reader:
        for conn, t_ns, data in reader.messages():
            out.append((conn.topic, conn.msgtype, int(t_ns), bytes(data)))
    return out


def read_bag(path: str | Path) -> list[BagMessage]:
    """Every message of a bag deserialised into its rclpy class, in time order, so recorded
    messages can be republished or compared with what live nodes publish."""
    classes: dict[str, MsgType] = {}
    out: list[BagMessage] = []
    for topic, msgtype, t_ns, data in read_bag_raw(path):
        cls = classes.get(msgtype)
        if cls is None:
            cls = classes[msgtype] = message_class(msgtype)
        out.append(BagMessage(topic, msgtype, t_ns, deserialize_message(data, cls)))
    return out


# ------------------------------------------------------------------------------- replay


def wait_for_subscribers(publishers: Iterable[Publisher], timeout_s: float = 5.0) -> bool:
    """DDS discovery is asynchronous: messages published before a subscriber is matched are
    lost even with reliable QoS, so replay waits for every topic to have a reader."""
    pubs = list(publishers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in pubs):
            return True
        time.sleep(0.01)
    return all(p.get_subscription_count() > 0 for p in pubs)


def replay(
    bag: str | Path | Sequence[BagMessage],
    node: Node,
    topics_in: Iterable[str],
    rate: float | None = 1.0,
    qos: QoSProfile | None = None,
    wait_s: float = 5.0,
    remap: Mapping[str, str] | None = None,
) -> int:
    """Publish the recorded messages of ``topics_in`` from ``node``, in recorded order.

    ``rate`` scales the recorded gaps (2.0 = twice as fast); ``None`` (or 0 / inf) publishes
    as fast as possible. Only the *inputs* of the nodes under test should be replayed: their
    outputs are what is compared afterwards. Messages on different topics have no delivery
    order between them over DDS, so when one input must be handled before another (a question
    before its answer) replay at ``rate=1.0`` or faster rather than as fast as possible.
    ``remap`` maps recorded topic names to the names to publish on (e.g. into a test
    namespace). Blocks the calling thread, so the nodes under test must be spun by another
    thread. Returns the number of messages published.
    """
    messages = read_bag(bag) if isinstance(bag, str | Path) else list(bag)
    wanted = set(topics_in)
    selected = [m for m in messages if m.topic in wanted]
    names = dict(remap or {})
    profile = qos if qos is not None else _reliable(1000)
    pubs: dict[str, Publisher] = {}
    for m in selected:
        if m.topic not in pubs:
            out_topic = names.get(m.topic, m.topic)
            pubs[m.topic] = node.create_publisher(type(m.msg), out_topic, profile)
    try:
        if pubs and not wait_for_subscribers(pubs.values(), wait_s):
            node.get_logger().warning("replay: some topics have no subscriber; publishing anyway")
        realtime = rate is not None and 0.0 < rate < math.inf
        t0_bag = selected[0].t_ns if selected else 0
        t0_wall = time.monotonic()
        for m in selected:
            if realtime:
                assert rate is not None
                due = t0_wall + (m.t_ns - t0_bag) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            pubs[m.topic].publish(m.msg)
    finally:
        # destroy only after the data is acknowledged: a reliable writer destroyed at once
        # may drop what the reader has not fetched yet
        for pub in pubs.values():
            pub.wait_for_all_acked(_duration(wait_s))
            node.destroy_publisher(pub)
    return len(selected)


def _duration(seconds: float) -> Any:
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


# ------------------------------------------------------------------------------ compare


def _is_message(value: Any) -> bool:
    return hasattr(value, "get_fields_and_field_types")


@functools.lru_cache(maxsize=256)
def _pattern(pat: str) -> re.Pattern[str]:
    """``*`` matches anything (dots included) and ``[*]`` any list index; unlike fnmatch,
    brackets are literal, so ``candidates[0].score`` means that element."""
    rx = re.escape(pat).replace(r"\[\*\]", r"\[\d+\]").replace(r"\*", ".*")
    return re.compile(rx + r"\Z")


def _ignored(path: str, ignore: Sequence[str]) -> bool:
    bare = _strip_indices(path)
    return any(_pattern(p).match(path) or _pattern(p).match(bare) for p in ignore)


def _strip_indices(path: str) -> str:
    out: list[str] = []
    depth = 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _values_equal(a: Any, b: Any, float32: bool) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        if float32:  # a Python float set on a float32 field only survives CDR rounded
            return bool(np.float32(a) == np.float32(b))
        return a == b
    return bool(a == b)


def _element_type(field_type: str) -> str:
    """``sequence<float, 5>`` / ``float[3]`` / ``sequence<pkg/Msg>`` -> the element type."""
    if field_type.startswith("sequence<"):
        return field_type[len("sequence<") :].rstrip(">").split(",")[0].strip()
    return field_type.split("[", 1)[0]


def diff_messages(
    a: Any,
    b: Any,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    path: str = "",
    field_type: str = "",
) -> list[str]:
    """Field-wise differences between two rclpy messages, as ``"path: a != b"`` lines, so a
    failing regression says *which* field changed rather than "messages differ".

    float32 fields compare at float32 precision: a message built in Python holds doubles
    that the wire (and hence any bag or subscriber) rounds.
    """
    if path and _ignored(path, ignore):
        return []
    where = path or "<msg>"
    if _is_message(a) and _is_message(b):
        if type(a) is not type(b):
            return [f"{where}: type {type(a).__name__} != {type(b).__name__}"]
        out: list[str] = []
        for field, ftype in a.get_fields_and_field_types().items():
            sub = f"{path}.{field}" if path else field
            out.extend(diff_messages(getattr(a, field), getattr(b, field), ignore, sub, ftype))
        return out
    if isinstance(a, str | bytes) or isinstance(b, str | bytes):
        return [] if a == b else [f"{where}: {a!r} != {b!r}"]
    if hasattr(a, "__len__") and hasattr(b, "__len__"):
        la, lb = list(a), list(b)
        if len(la) != len(lb):
            return [f"{where}: length {len(la)} != {len(lb)}"]
        elem = _element_type(field_type)
        out = []
        for i, (x, y) in enumerate(zip(la, lb, strict=True)):
            out.extend(diff_messages(x, y, ignore, f"{path}[{i}]", elem))
        return out
    if _values_equal(a, b, float32=field_type == "float"):
        return []
    return [f"{where}: {a!r} != {b!r}"]


def _topic_of(item: Any) -> str | None:
    return item.topic if isinstance(item, BagMessage) else None


def _msg_of(item: Any) -> Any:
    if isinstance(item, BagMessage):
        return item.msg
    if isinstance(item, tuple) and len(item) == 4:
        return item[3]
    return item


def compare(
    recorded: Sequence[Any],
    observed: Sequence[Any],
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> list[str]:
    """Differences between a recording and a re-run; empty means "behaves the same".

    Items are rclpy messages or :class:`BagMessage` (or 4-tuples like it). With topics known
    on both sides, messages are compared per topic in order, because separate topics have no
    defined order between them over DDS; otherwise the two sequences are compared in order.
    ``ignore`` holds glob patterns of field paths, matched with and without list indices:
    ``"header.stamp"``, ``"candidates.score"`` (every element), ``"candidates[*].score"``,
    ``"candidates[0]"`` (one element), ``"*.stamp"`` (at any depth).
    """
    rec_topics = [_topic_of(_as_bag(i)) for i in recorded]
    obs_topics = [_topic_of(_as_bag(i)) for i in observed]
    by_topic = all(t is not None for t in rec_topics + obs_topics)
    groups: dict[str, tuple[list[Any], list[Any]]] = {}
    if by_topic:
        for t, item in zip(rec_topics, recorded, strict=True):
            groups.setdefault(str(t), ([], []))[0].append(_msg_of(item))
        for t, item in zip(obs_topics, observed, strict=True):
            groups.setdefault(str(t), ([], []))[1].append(_msg_of(item))
    else:
        groups[""] = ([_msg_of(i) for i in recorded], [_msg_of(i) for i in observed])
    out: list[str] = []
    for topic in sorted(groups):
        rec, obs = groups[topic]
        label = f"{topic}" if topic else ""
        if len(rec) != len(obs):
            out.append(f"{label or '<all>'}: {len(rec)} recorded != {len(obs)} observed")
        for i, (a, b) in enumerate(zip(rec, obs, strict=False)):
            out.extend(f"{label}#{i} {d}" for d in diff_messages(a, b, ignore))
    return out


def _as_bag(item: Any) -> Any:
    if isinstance(item, tuple) and not isinstance(item, BagMessage) and len(item) == 4:
        return BagMessage(*item)
    return item
