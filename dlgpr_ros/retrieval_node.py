"""Retrieval node: ranks the map's places for each round's query (a lifecycle node).

It is a managed (lifecycle) node because its resources are heavy and shared: loading the
encoder takes seconds and the map holds an index in memory, so a robot configures it once,
and can deactivate it (stop answering, keep the model) or clean it up (free the memory)
without killing the process. Requests that arrive while it is inactive are counted and
logged, never answered with stale resources; the dialogue manager's resend timer covers
the gap.
"""

from __future__ import annotations

import threading
from collections import Counter
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
            "max_k",
            1000,
            ParameterDescriptor(
                description="Upper bound on k, so one request cannot rank "
                "an arbitrarily large share of a big map."
            ),
        )
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
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
        """Frees the map and the entities; the encoder stays in the process cache."""
        self._active = False
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db, self._encoder = None, None

    # -- serving --------------------------------------------------------------------
    def _on_request(self, msg: RetrievalRequest) -> None:
        if not self._active:
            self.counters["ignored_inactive"] += 1
            self.get_logger().warning(
                f"inactive: request {msg.dialogue_id}/{msg.round} not answered"
            )
            return
        k_default = int(self.get_parameter("k").value)
        k = min(max(int(msg.k) or k_default, 1), int(self.get_parameter("max_k").value))
        with self._lock:
            if self._db is None or self._encoder is None or self._pub is None:
                self.counters["ignored_inactive"] += 1
                return
            try:
                hits: Sequence[Any] = self._db.search(msg.query_text, self._encoder, k=k)
            except Exception as exc:  # a bad query must not take the node down
                self.counters["errors"] += 1
                self.get_logger().error(f"search failed for {msg.dialogue_id}: {exc}")
                hits = []
            encoder = self._encoder.fingerprint
            pub = self._pub
        pub.publish(
            conversions.candidate_list(
                hits,
                dialogue_id=msg.dialogue_id,
                round_=int(msg.round),
                query_text=msg.query_text,
                encoder=encoder,
                stamp=self.get_clock().now().to_msg(),
            )
        )
        self.counters["answered"] += 1


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros retrieval_node`: configures and activates itself, like bringup."""

    rclpy.init(args=args)
    spin_nodes([RetrievalNode()], lifecycle_autostart=True)


if __name__ == "__main__":
    main()
