"""The node set as data: one source for the launch file and the pip-only bringup.

`config/nodes.yaml` says which nodes exist (class, executable, parameter section, when they
are enabled); `config/dialogue.yaml` holds their parameters in the standard
``node_name: ros__parameters:`` layout. Neither the launch file nor `bringup` lists nodes
itself: both call `launch_plan`, so what a full ROS install launches and what the tests
start cannot drift apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "dlgpr_ros"
INPUT_MODES = ("typed", "speech")


def _share_dir() -> Path:
    """The source tree's config/ in a checkout, else the installed share/dlgpr_ros/."""
    here = Path(__file__).resolve().parent.parent
    if (here / "config" / "nodes.yaml").is_file():
        return here
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE))


def default_config_path() -> Path:
    """config/dialogue.yaml: the parameters of every node."""
    return _share_dir() / "config" / "dialogue.yaml"


def default_nodes_path() -> Path:
    """config/nodes.yaml: the node set."""
    return _share_dir() / "config" / "nodes.yaml"


@dataclass(frozen=True)
class NodeSpec:
    """One entry of nodes.yaml."""

    name: str
    target: str
    """``module:Class`` of the node."""
    executable: str
    params: str
    """Section of dialogue.yaml holding this node's parameters."""
    lifecycle: bool = False
    optional: bool = False
    """May be absent (its module not written yet): bringup skips it with a warning."""
    enabled_when: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    """Condition name -> allowed values; every condition must hold."""

    def enabled(self, conditions: Mapping[str, Any]) -> bool:
        """Whether this node runs under `conditions` (e.g. ``{"input": "typed"}``)."""
        return all(conditions.get(key) in allowed for key, allowed in self.enabled_when.items())

    def load_class(self) -> type:
        """Imports the node class; ImportError when its module does not exist (yet)."""
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class PlannedNode:
    """A node as it will be started: what both the launch file and bringup consume."""

    spec: NodeSpec
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


def load_node_specs(nodes_path: Path | str | None = None) -> list[NodeSpec]:
    """Every node of nodes.yaml, in file order (the start order)."""
    path = Path(nodes_path) if nodes_path else default_nodes_path()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for entry in data.get("nodes", []):
        specs.append(
            NodeSpec(
                name=str(entry["name"]),
                target=str(entry["class"]),
                executable=str(entry["executable"]),
                params=str(entry.get("params", entry["name"])),
                lifecycle=bool(entry.get("lifecycle", False)),
                optional=bool(entry.get("optional", False)),
                enabled_when={k: list(v) for k, v in (entry.get("enabled_when") or {}).items()},
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate node names in {names}")
    return specs


def load_parameters(config_path: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Section -> parameters, from the ``section: ros__parameters: {...}`` layout."""
    path = Path(config_path) if config_path else default_config_path()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        params = (body or {}).get("ros__parameters")
        if not isinstance(params, dict):
            raise ValueError(f"{path}: section {section!r} lacks ros__parameters")
        out[str(section)] = dict(params)
    return out


def apply_overrides(
    section: str, params: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """``"node.param": v`` sets one node's parameter; a bare ``"param": v`` sets it on every
    node whose section declares it (so ``map_path`` reaches all nodes that read the map,
    and nothing gets parameters it does not declare)."""
    out = dict(params)
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        if target == section or (not target and name in params):
            # ROS parameters are strictly typed: 5 must stay 5.0 where the file says 5.0.
            if isinstance(params.get(name), float) and isinstance(value, int):
                value = float(value)
            out[name] = value
    return out


def launch_plan(
    config_path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    input_mode: str = "typed",
    *,
    simulate: bool = False,
    print_dialogue: bool = True,
    nodes_path: Path | str | None = None,
) -> list[PlannedNode]:
    """The enabled nodes with their final parameters, in start order (`print_dialogue`:
    the console printer, on by default so a person at the robot sees the dialogue)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {INPUT_MODES}, got {input_mode!r}")
    conditions = {"input": input_mode, "simulate": simulate, "print": print_dialogue}
    sections = load_parameters(config_path)
    plan = []
    for spec in load_node_specs(nodes_path):
        if not spec.enabled(conditions):
            continue
        params = apply_overrides(spec.params, sections.get(spec.params, {}), overrides or {})
        plan.append(PlannedNode(spec, params))
    return plan
