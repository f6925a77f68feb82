"""Pip-only bringup: the launch file's node set, started in one process.

`ros2 launch` is not available from PyPI, so this starts the very nodes that
`launch/dialogue.launch.py` starts, from the same data (`graph.launch_plan`), each node
spinning on its own thread and single-threaded executor, as each would in its own process
(`spin.NodeThreads` says why not one executor for all). The lifecycle retrieval node is
configured and activated here, as a lifecycle manager would do in a full install. Each
graph gets its own rclpy Context, so tests can bring graphs up and down repeatedly in one
process.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rclpy
import yaml
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.parameter import Parameter

from dlgpr_ros.graph import INPUT_MODES, PlannedNode, launch_plan
from dlgpr_ros.spin import NodeThreads, activate, describe_error

if TYPE_CHECKING:
    from dlgpr_ros.bag import BagRecorder

log = logging.getLogger(__name__)

DIALOGUE_TOPICS: tuple[tuple[str, str], ...] = (
    ("utterance", "dlgpr_ros/msg/Utterance"),
    ("typed_text", "std_msgs/msg/String"),
    ("audio", "dlgpr_ros/msg/AudioChunk"),
    ("retrieval_request", "dlgpr_ros/msg/RetrievalRequest"),
    ("candidates", "dlgpr_ros/msg/CandidateList"),
    ("dialogue_state", "dlgpr_ros/msg/DialogueState"),
    ("question", "dlgpr_ros/msg/Question"),
    ("localization", "dlgpr_ros/msg/Localization"),
)
"""Every topic a dialogue travels on, inputs and outputs: what `--record` captures, so a
bag holds enough to replay the inputs and compare every output."""


def make_node(planned: PlannedNode, *, namespace: str = "", context: Context | None = None) -> Node:
    """One planned node, its parameters given as overrides of the declared defaults."""
    cls = planned.spec.load_class()
    node: Node = cls(
        planned.name,
        namespace=namespace,
        context=context,
        parameter_overrides=[Parameter(k, value=v) for k, v in planned.parameters.items()],
    )
    return node


class Graph:
    """A running node set: look nodes up by name, restart them, wait for conditions."""

    def __init__(self, plan: Sequence[PlannedNode], *, namespace: str = "") -> None:
        self.plan = {p.name: p for p in plan}
        self.namespace = namespace
        self.context = Context()
        rclpy.init(context=self.context)
        self._errors_lock = threading.Lock()
        self.executor = NodeThreads(self.context, self._on_callback_error)
        """Spins each node on its own thread once the graph spins (`spin`, `spin_in_thread`)."""
        self.nodes: dict[str, Node] = {}
        self.skipped: dict[str, str] = {}
        """Optional nodes that could not be imported, with the reason."""
        self.recorder: BagRecorder | None = None
        self._recorder_node: Node | None = None
        self._stopped = threading.Event()
        self.callback_errors = 0
        """Exceptions raised by callbacks, each logged; the graph spins on (see spin.py)."""

    def record(self, path: Path | str) -> BagRecorder:
        """Records every dialogue topic into a rosbag2 MCAP bag at `path` until shutdown.

        The recorder has a node of its own rather than borrowing a planned one: nodes are
        stopped and restarted (tests, crashes), and the recording must outlive them."""
        from dlgpr_ros.bag import BagRecorder

        if self.recorder is not None:
            raise RuntimeError(f"already recording to {self.recorder.path}")
        node = Node("dlgpr_recorder", namespace=self.namespace, context=self.context)
        self._recorder_node = node
        self.recorder = BagRecorder(node, path, list(DIALOGUE_TOPICS))
        self.executor.add_node(node)
        return self.recorder

    def start(self, name: str) -> Node | None:
        """Creates (or re-creates) a planned node and adds it to the executor."""
        planned = self.plan[name]
        try:
            node = make_node(planned, namespace=self.namespace, context=self.context)
        except ImportError as exc:
            if not planned.spec.optional:
                raise
            self.skipped[name] = str(exc)
            log.warning("optional node %s skipped: %s", name, exc)
            return None
        if isinstance(node, LifecycleNode):
            activate(node)
        self.nodes[name] = node
        self.executor.add_node(node)
        return node

    def stop(self, name: str) -> None:
        """Destroys one node (a crash or restart, as far as its peers can tell)."""
        node = self.nodes.pop(name)
        self.executor.remove_node(node)
        if isinstance(node, LifecycleNode):
            node.trigger_shutdown()
        node.destroy_node()

    def add(self, node: Node) -> None:
        """Spins an extra node (a test probe) with the graph."""
        self.executor.add_node(node)

    def node(self, name: str) -> Any:
        """A running node by its planned name (typed Any: callers know its class)."""
        return self.nodes[name]

    def spin_in_thread(self) -> None:
        """Starts spinning every node (each on its own thread) and returns."""
        self.executor.start()

    def spin(self) -> None:
        """Spins until shutdown (`shutdown`, or the context's: Ctrl-C), surviving any
        callback's exception (counted and logged)."""
        self.executor.start()
        while self.context.ok() and not self._stopped.wait(0.2):
            pass

    def _on_callback_error(self, exc: Exception) -> None:
        with self._errors_lock:
            self.callback_errors += 1
            count = self.callback_errors
        log.error("%s [%d so far]", describe_error(exc), count)

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Waits (the executor spins in its thread) until `done()` or the timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            time.sleep(0.02)
        return done()

    def shutdown(self) -> None:
        """Stops spinning, then destroys every node and the context; safe to call twice."""
        self._stopped.set()
        self.executor.shutdown(timeout_sec=5.0)
        if self.recorder is not None:
            # the MCAP footer is written here; without it the bag is unreadable
            self.recorder.close()
        if self._recorder_node is not None:
            self.executor.remove_node(self._recorder_node)
            self._recorder_node.destroy_node()
            self._recorder_node = None
        for name in list(self.nodes):
            self.stop(name)
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def bringup(
    config_path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    input_mode: str = "typed",
    *,
    simulate: bool = False,
    print_dialogue: bool = True,
    namespace: str = "",
    nodes_path: Path | str | None = None,
    spin: bool = True,
    record: Path | str | None = None,
) -> Graph:
    """Starts the planned nodes (see `graph.launch_plan`) and, with `spin`, spins them in a
    background thread; use the result as a context manager or call `shutdown()`.

    With `record`, every dialogue topic is recorded into a bag there (see `Graph.record`);
    the recorder starts before the nodes so that discovery has begun by their first message.
    """
    plan = launch_plan(
        config_path,
        overrides,
        input_mode,
        simulate=simulate,
        print_dialogue=print_dialogue,
        nodes_path=nodes_path,
    )
    graph = Graph(plan, namespace=namespace)
    try:
        if record is not None:
            graph.record(record)
        for planned in plan:
            graph.start(planned.name)
    except BaseException:
        graph.shutdown()
        raise
    if spin:
        graph.spin_in_thread()
    return graph


@contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[Graph]:
    """`with running(config, overrides) as graph:` -- bringup with guaranteed shutdown."""
    graph = bringup(*args, **kwargs)
    try:
        yield graph
    finally:
        graph.shutdown()


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`dlgpr bringup` / `python -m dlgpr_ros.bringup`: the launch file without `launch`."""
    ap = argparse.ArgumentParser(
        prog="dlgpr bringup", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--config", type=Path, default=None, help="dialogue.yaml (parameters)")
    ap.add_argument("--nodes", type=Path, default=None, help="nodes.yaml (node set)")
    ap.add_argument("--map", default=None, help="map directory (sets every map_path)")
    ap.add_argument("--questioner", default=None, help="info-gain or random")
    ap.add_argument("--input", choices=INPUT_MODES, default="typed")
    ap.add_argument("--namespace", default="")
    ap.add_argument(
        "--simulate",
        action="append",
        default=[],
        metavar="PLACE_ID",
        help="run a simulated user looking for this place (repeatable)",
    )
    ap.add_argument("--set", action="append", default=[], metavar="[NODE.]PARAM=VALUE")
    ap.add_argument(
        "--record", type=Path, default=None, metavar="PATH", help="record a rosbag2 bag here"
    )
    ap.add_argument("--quiet", action="store_true", help="do not print the dialogue")
    args = ap.parse_args(argv)
    overrides = _parse_set(args.set)
    if args.map:
        overrides["map_path"] = args.map
    if args.questioner:
        overrides["questioner.questioner"] = args.questioner
    if args.simulate:
        overrides["simulated_user.targets"] = ",".join(args.simulate)
    if args.input == "typed":
        overrides.setdefault("typed_input.read_stdin", True)
    graph = bringup(
        args.config,
        overrides,
        args.input,
        simulate=bool(args.simulate),
        print_dialogue=not args.quiet,
        namespace=args.namespace,
        nodes_path=args.nodes,
        spin=False,
        record=args.record,
    )
    try:
        graph.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        graph.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
