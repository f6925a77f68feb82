"""Spinning nodes: the body of every node's `main` and the lifecycle start-up bringup uses.

Kept apart from `bringup` so that a node module never imports the graph that starts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node


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
    try:
        for node in nodes:
            if lifecycle_autostart and isinstance(node, LifecycleNode):
                activate(node)
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
