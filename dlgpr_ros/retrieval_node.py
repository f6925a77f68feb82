"""Retrieval node: ranks the map's places for each round's query (a lifecycle node).

It is a managed (lifecycle) node because its resources are heavy and shared: loading the
encoder takes seconds and the map holds an index in memory, so a robot configures it once,
and can deactivate it (stop answering, keep the model) or clean it up (free the memory)
without killing the process. Requests that arrive while it is inactive are counted and
logged, never answered with stale resources; the dialogue manager's resend timer covers
the gap.

Searches run on a worker thread that takes requests from a queue keyed by (dialogue id,
round): a re-send of a request that is still queued replaces it instead of queueing a second
search. Under a burst (100 dialogues starting at once) the queue outlasts the manager's
request time-out, and searching every re-send made the backlog grow with each re-send
until dialogues failed; now the backlog is at most one request per live dialogue. The
subscription callback only validates and enqueues, so the executor never waits on a search.

A transition may come while a search runs (a lifecycle manager's service call on another
thread): the map, the encoder and the publisher are taken and released under one lock, so
a clean-up waits for the search in flight to publish, and a search never meets half-freed
resources (the publisher used to be destroyed under a running search, whose publish then
raised and stopped the executor). Queries longer than `max_query_bytes` are refused
(counted and logged): the manager never sends one, so a peer that does is broken or hostile.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.subscription import Subscription

from dlgpr_core.mapdb.access import DEFAULT_MAP
from dlgpr_ros import conversions
from dlgpr_ros.msg import CandidateList, RetrievalRequest
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.spin import spin_nodes

if TYPE_CHECKING:
    from dlgpr_core.encoders.base import Encoder
    from dlgpr_core.mapdb.database import MapDatabase

MAX_QUEUED = 1000
"""Requests waiting for a search (distinct dialogue rounds); beyond it the oldest is dropped
and counted (the manager re-sends what is still wanted)."""


class RetrievalNode(LifecycleNode):
    """retrieval_request -> candidates, while active."""

    def __init__(self, node_name: str = "retrieval", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter(
            "map_path",
            "",
            ParameterDescriptor(
                description=f"Map database directory; empty: {DEFAULT_MAP} (`dlgpr demo`)."
            ),
        )
        self.declare_parameter(
            "encoder",
            "",
            ParameterDescriptor(
                description="Query encoder spec; empty: the one the map was built with."
            ),
        )
        self.declare_parameter(
            "k",
            10,
            ParameterDescriptor(
                description="Places returned when a request asks for k=0; also the minimum."
            ),
        )
        self.declare_parameter(
            "max_query_bytes",
            100_000,
            ParameterDescriptor(
                description="Longer query texts are refused (counted as query_too_long); the "
                "dialogue manager's are at most its description and answers "
                "(max_utterance_bytes each)."
            ),
        )
        self.declare_parameter(
            "max_k",
            1000,
            ParameterDescriptor(
                description="Upper bound on k, so one request cannot rank "
                "an arbitrarily large share of a big map."
            ),
        )
        self.counters: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        """Guards the map, the encoder and the publisher (a search holds it until published)."""
        self._queued: OrderedDict[tuple[str, int], RetrievalRequest] = OrderedDict()
        self._wake = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="retrieval_worker", daemon=True)
        self._worker.start()
        self._group = MutuallyExclusiveCallbackGroup()
        self._db: MapDatabase | None = None
        self._encoder: Encoder | None = None
        self._pub: LifecyclePublisher[CandidateList] | None = None
        self._sub: Subscription[RetrievalRequest] | None = None
        self._active = False

    # -- lifecycle ------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Loads the map and encoder; a bad path or encoder fails the transition cleanly."""
        from dlgpr_core.mapdb.access import map_encoder
        from dlgpr_core.mapdb.database import MapDatabase

        path = Path(self.get_parameter("map_path").value or DEFAULT_MAP)
        try:
            db = MapDatabase.open(path)
        except Exception as exc:  # MapError, sqlite errors: report, stay unconfigured
            self.get_logger().error(f"cannot open map {path}: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            enc = map_encoder(db, str(self.get_parameter("encoder").value) or None)
        except Exception as exc:
            db.close()
            self.get_logger().error(f"cannot load the encoder for {path}: {exc}")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._db, self._encoder = db, enc
        self._pub = self.create_lifecycle_publisher(
            CandidateList, "candidates", TOPIC_QOS["candidates"]
        )
        self._sub = self.create_subscription(
            RetrievalRequest,
            "retrieval_request",
            self._on_request,
            TOPIC_QOS["retrieval_request"],
            callback_group=self._group,
        )
        self.get_logger().info(f"configured: map {path}, encoder {enc.fingerprint}")
        return TransitionCallbackReturn.SUCCESS

    # The base class (de)activates the managed publisher: always chain to it.
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_cleanup(state)
        self._release()
        return result

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_shutdown(state)
        self._release()
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        super().on_error(state)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Frees the map and the entities; the encoder stays in the process cache. Under the
        lock: a search in flight finishes (and publishes) first. Queued requests are
        dropped: the manager re-sends what it still waits for."""
        self._active = False
        with self._wake:
            self._queued.clear()
        with self._lock:
            if self._sub is not None:
                self.destroy_subscription(self._sub)
                self._sub = None
            if self._pub is not None:
                self.destroy_lifecycle_publisher(self._pub)
                self._pub = None
            if self._db is not None:
                self._db.close()
            self._db, self._encoder = None, None

    # -- serving --------------------------------------------------------------------
    def _count(self, name: str) -> int:
        with self._count_lock:
            self.counters[name] += 1
            return self.counters[name]

    def _on_request(self, msg: RetrievalRequest) -> None:
        """Validates and enqueues (see the module docstring); never searches."""
        if not self._active:
            self._count("ignored_inactive")
            self.get_logger().warning(
                f"inactive: request {msg.dialogue_id}/{msg.round} not answered"
            )
            return
        size, limit = len(msg.query_text.encode("utf-8")), self.max_query_bytes
        if size > limit:
            n = self._count("query_too_long")
            self.get_logger().warning(
                f"refused request {msg.dialogue_id[:80]!r}/{msg.round}: query of {size} bytes "
                f"> max_query_bytes={limit} [{n} refused]",
                throttle_duration_sec=1.0,
            )
            return
        key = (msg.dialogue_id, int(msg.round))
        with self._wake:
            if key in self._queued:
                self._count("merged_resends")  # same round, same query: one search serves both
            elif len(self._queued) >= MAX_QUEUED:
                self._queued.popitem(last=False)
                self._count("dropped_backlog")
            self._queued[key] = msg
            self._wake.notify()

    @property
    def queued(self) -> int:
        """Requests waiting for a search."""
        with self._wake:
            return len(self._queued)

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queued and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                _, msg = self._queued.popitem(last=False)
            try:
                self._serve(msg)
            except Exception as exc:  # the worker must outlive any one request
                self._count("errors")
                self.get_logger().error(
                    f"request {msg.dialogue_id}/{msg.round} failed: {type(exc).__name__}: {exc}"
                )

    def _serve(self, msg: RetrievalRequest) -> None:
        k_default = int(self.get_parameter("k").value)
        k = min(max(int(msg.k) or k_default, 1), int(self.get_parameter("max_k").value))
        with self._lock:  # held until published: a clean-up waits (see the module docstring)
            if not self._active or self._db is None or self._encoder is None or self._pub is None:
                self._count("ignored_inactive")
                return
            try:
                hits: Sequence[Any] = self._db.search(msg.query_text, self._encoder, k=k)
            except Exception as exc:  # a bad query must not take the node down
                self._count("errors")
                self.get_logger().error(f"search failed for {msg.dialogue_id}: {exc}")
                hits = []
            self._pub.publish(
                conversions.candidate_list(
                    hits,
                    dialogue_id=msg.dialogue_id,
                    round_=int(msg.round),
                    query_text=msg.query_text,
                    encoder=self._encoder.fingerprint,
                    stamp=self.get_clock().now().to_msg(),
                )
            )
        self._count("answered")

    def destroy_node(self) -> None:
        """Stops the worker (after the search in flight, if any), then the node."""
        with self._wake:
            self._closing = True
            self._queued.clear()
            self._wake.notify_all()
        self._worker.join(timeout=30.0)
        super().destroy_node()

    @property
    def max_query_bytes(self) -> int:
        return int(self.get_parameter("max_query_bytes").value)


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros retrieval_node`: configures and activates itself, like bringup."""

    rclpy.init(args=args)
    spin_nodes([RetrievalNode()], lifecycle_autostart=True)


if __name__ == "__main__":
    main()
