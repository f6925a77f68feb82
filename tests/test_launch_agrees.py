"""launch/dialogue.launch.py and the pip-only bringup start the same nodes, same parameters.

`launch` is not installable from PyPI, so the launch file is loaded as a plain module (it
imports `launch` only inside generate_launch_description) and its `node_plan` compared
with the nodes bringup really runs and the parameter values they really hold.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_ros_graph import build_map

from dlgpr_ros.bringup import bringup
from dlgpr_ros.graph import load_node_specs

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parent.parent


def _launch_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dialogue_launch", ROOT / "launch/dialogue.launch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Any:
    return build_map(tmp_path_factory.mktemp("roslaunch"))


def test_launch_file_loads_without_launch() -> None:
    had = {m for m in ("launch", "launch_ros") if m in sys.modules}
    module = _launch_module()
    assert {m for m in ("launch", "launch_ros") if m in sys.modules} == had
    assert callable(module.generate_launch_description)
    assert set(module.ARGUMENTS) == {"config", "map", "questioner", "input", "evidence"}


@pytest.mark.parametrize("input_mode", ["typed", "speech"])
def test_bringup_starts_what_launch_starts(city: Any, input_mode: str) -> None:
    map_path = str(city[0])
    module = _launch_module()
    plan = module.node_plan("", map_path, "random", input_mode, "oracle")
    names = [p.name for p in plan]
    assert "retrieval" in names and "dialogue_manager" in names and "questioner" in names
    assert ("typed_input" in names) == (input_mode == "typed")
    assert ("speech" in names) == (input_mode == "speech")
    overrides = module.overrides_from_arguments(map_path, "random", "oracle")
    with bringup(None, overrides, input_mode, spin=False) as graph:
        started = set(graph.nodes) | set(graph.skipped)
        assert started == set(names)
        assert set(graph.skipped) <= {p.name for p in plan if p.spec.optional}
        for planned in plan:
            if planned.name in graph.skipped:
                continue
            node = graph.node(planned.name)
            assert node.get_name() == planned.name
            for key, value in planned.parameters.items():
                assert node.get_parameter(key).value == value, (planned.name, key)
        assert graph.node("questioner").questioner.name == "random"
        assert graph.node("retrieval").get_parameter("map_path").value == map_path


def test_every_executable_is_installed() -> None:
    """`ros2 run` needs each non-optional executable installed by CMakeLists.txt."""
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    installed = set(re.findall(r"scripts/nodes/(\w+)", cmake))
    for spec in load_node_specs():
        if not spec.optional:
            assert spec.executable in installed, spec.executable
            assert (ROOT / "scripts" / "nodes" / spec.executable).is_file()


def test_ros_verbs_come_from_the_ros_package_plugin() -> None:
    """`dlgpr demo` / `dlgpr bringup` are registered by dlgpr_ros through the entry-point
    group the colcon install writes (CMakeLists.txt), with package.xml's version."""
    from importlib.metadata import distribution, entry_points

    from dlgpr_core.cli import PLUGIN_GROUP, app

    (ep,) = [e for e in entry_points(group=PLUGIN_GROUP) if e.name == "ros"]
    assert ep.value == "dlgpr_ros.cli:register"
    version = re.search(r"<version>([^<]+)</version>", (ROOT / "package.xml").read_text())
    assert version is not None
    assert distribution("dlgpr-ros-commands").version == version.group(1)
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"dlgpr_ros_commands-{version.group(1)}.dist-info" in cmake
    callbacks = {
        c.name or getattr(c.callback, "__name__", ""): c.callback for c in app.registered_commands
    }
    for verb in ("demo", "bringup"):
        callback = callbacks[verb]
        assert callback is not None and callback.__module__ == "dlgpr_ros.cli", verb
