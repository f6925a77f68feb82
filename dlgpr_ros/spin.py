"""Spinning nodes: the body of every node's `main` and the lifecycle start-up bringup uses.

Kept apart from `bringup` so that a node module never imports the graph that starts it.

rclpy re-raises a callback's exception in the thread that spins (`spin_once` collects each
finished callback's result): one faulty callback would end `executor.spin()` and with it
every node of the executor, i.e. the whole graph under bringup. `spin_through_errors` reports
such an exception and spins on.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
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
