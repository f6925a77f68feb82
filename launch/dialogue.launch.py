"""Launches the dlgpr dialogue graph on a full ROS 2 install.

The node set is not written here: `node_plan` asks dlgpr_ros.graph.launch_plan, which reads
config/nodes.yaml and config/dialogue.yaml, the same data the pip-only `dlgpr bringup`
starts from. `launch` is imported only inside generate_launch_description, so tests can
load this file and call `node_plan` where `launch` is not installed.

    ros2 launch dlgpr_ros dialogue.launch.py map:=data/demo/map questioner:=random input:=typed
"""

from __future__ import annotations

from typing import Any

from dlgpr_ros.graph import PlannedNode, default_config_path, launch_plan

ARGUMENTS = {
    "config": ("", "parameters file (default: the package's config/dialogue.yaml)"),
    "map": ("", "map directory; sets map_path of every node that reads the map"),
    "questioner": ("info-gain", "questioner: info-gain or random"),
    "evidence": ("", "annotator whose map evidence the robot reads (default: learned)"),
    "input": ("typed", "input mode: typed or speech"),
}


def overrides_from_arguments(map_path: str, questioner: str, evidence: str = "") -> dict[str, Any]:
    """Launch arguments -> the overrides bringup takes (empty arguments change nothing)."""
    out: dict[str, Any] = {}
    if map_path:
        out["map_path"] = map_path
    if questioner:
        out["questioner.questioner"] = questioner
    if evidence:
        out["evidence"] = evidence
    return out


def node_plan(
    config: str = "",
    map_path: str = "",
    questioner: str = "",
    input_mode: str = "typed",
    evidence: str = "",
) -> list[PlannedNode]:
    """The nodes to start and their parameters for these launch arguments."""
    return launch_plan(
        config or default_config_path(),
        overrides_from_arguments(map_path, questioner, evidence),
        input_mode,
    )


def _nodes(context: Any) -> list[Any]:
    from launch_ros.actions import LifecycleNode, Node

    args = {name: context.perform_substitution(_config(name)) for name in ARGUMENTS}
    actions = []
    for planned in node_plan(
        args["config"], args["map"], args["questioner"], args["input"], args["evidence"]
    ):
        kwargs = {
            "package": "dlgpr_ros",
            "executable": planned.spec.executable,
            "name": planned.name,
            "namespace": "",
            "parameters": [planned.parameters],
            "output": "screen",
        }
        actions.append(LifecycleNode(**kwargs) if planned.spec.lifecycle else Node(**kwargs))
    return actions


def _config(name: str) -> Any:
    from launch.substitutions import LaunchConfiguration

    return LaunchConfiguration(name)


def generate_launch_description() -> Any:
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchDescription

    return LaunchDescription(
        [
            *(
                DeclareLaunchArgument(name, default_value=default, description=desc)
                for name, (default, desc) in ARGUMENTS.items()
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
