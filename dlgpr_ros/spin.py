"""Spinning nodes: the body of every node's `main` and the lifecycle start-up bringup uses.

Kept apart from `bringup` so that a node module never imports the graph that starts it.

rclpy re-raises a callback's exception in the thread that spins (`spin_once` collects each
finished callback's result): one faulty callback would end `executor.spin()` and with it
every node of the executor, i.e. the whole graph under bringup. `spin_through_errors` reports
such an exception and spins on.

`NodeThreads` spins each node of a one-process graph on its own single-threaded executor and
thread, as `ros2 launch` gives each node its own process. One MultiThreadedExecutor for the
whole graph rebuilt its wait set over every node's entities (some 60: parameter and lifecycle
services, subscriptions, timers, the action server) several times per callback, in Python and
holding the GIL: on 2 busy cores that cost ~17 ms of CPU per dialogue round, more than the
dialogue manager's own work (benchmarks/bench_dialogue.py). Each node's executor wakes only for
its own entities, and a node's callbacks still never run at once (every node here keeps its
dialogue state in one mutually exclusive group anyway), while different nodes run in parallel
as before.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import (
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node


def spin_through_errors(executor: Executor, on_error: Callable[[Exception], None]) -> None:
    """`executor.spin()` until the executor or its context shuts down; an exception a
    callback raised goes to `on_error` (log it, count it) and spinning goes on."""
    while True:
        try:
            executor.spin()
            return
        except ExternalShutdownException:
            return
        except Exception as exc:
            on_error(exc)


class NodeThreads:
    """Spins every node on its own `SingleThreadedExecutor` and thread (see the module
    docstring). Nodes added before `start` wait for it; nodes added after spin at once.
    `add_node`, `remove_node` and `shutdown` mirror an executor's, so callers add and remove
    nodes as they would with one executor."""

    def __init__(self, context: Context, on_error: Callable[[Exception], None]) -> None:
        self._context = context
        self._on_error = on_error
        self._lock = threading.Lock()
        self._spinning: dict[Node, tuple[SingleThreadedExecutor, threading.Thread | None]] = {}
        self._started = False

    def _spin(self, node: Node, executor: SingleThreadedExecutor) -> threading.Thread:
        thread = threading.Thread(
            target=spin_through_errors,
            args=(executor, self._on_error),
            name=f"spin-{node.get_name()}",
            daemon=True,
        )
        thread.start()
        return thread

    def add_node(self, node: Node) -> None:
        executor = SingleThreadedExecutor(context=self._context)
        executor.add_node(node)
        with self._lock:
            if node in self._spinning:
                raise ValueError(f"node {node.get_name()} is spinning already")
            thread = self._spin(node, executor) if self._started else None
            self._spinning[node] = (executor, thread)

    def start(self) -> None:
        """Spins the nodes added so far, and from now on every node as it is added."""
        with self._lock:
            self._started = True
            for node, (executor, thread) in list(self._spinning.items()):
                if thread is None:
                    self._spinning[node] = (executor, self._spin(node, executor))

    @property
    def nodes(self) -> list[Node]:
        with self._lock:
            return list(self._spinning)

    def remove_node(self, node: Node, timeout_sec: float = 10.0) -> None:
        """Stops spinning `node` once its callback in progress, if any, returns (a node that
        is not spinning, e.g. after `shutdown`, is left alone)."""
        with self._lock:
            entry = self._spinning.pop(node, None)
        if entry is not None:
            self._stop(*entry, timeout_sec)

    def shutdown(self, timeout_sec: float | None = None) -> None:
        """Stops spinning every node (the nodes themselves are left to their owner)."""
        with self._lock:
            entries = list(self._spinning.values())
            self._spinning.clear()
            self._started = False
        for executor, thread in entries:
            self._stop(executor, thread, timeout_sec)

    @staticmethod
    def _stop(
        executor: SingleThreadedExecutor, thread: threading.Thread | None, timeout: float | None
    ) -> None:
        executor.shutdown(timeout_sec=timeout)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def describe_error(exc: BaseException) -> str:
    """One log entry for a callback's exception: what, then the traceback."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"a callback raised {type(exc).__name__}: {exc}; spinning on\n{trace}"


def activate(node: LifecycleNode) -> None:
    """configure + activate, failing loudly (a graph without retrieval is useless)."""
    for step in (node.trigger_configure, node.trigger_activate):
        result = step()
        if result != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"{node.get_name()}: {step.__name__} returned {result}")


def spin_nodes(nodes: Sequence[Node], *, lifecycle_autostart: bool = False) -> None:
    """Spin until Ctrl-C or an external shutdown, then destroy the nodes and shut rclpy
    down (rclpy.init was called by the caller)."""
    executor = MultiThreadedExecutor()

    def report(exc: Exception) -> None:
        nodes[0].get_logger().error(describe_error(exc))

    try:
        for node in nodes:
            if lifecycle_autostart and isinstance(node, LifecycleNode):
                activate(node)
            executor.add_node(node)
        spin_through_errors(executor, report)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
