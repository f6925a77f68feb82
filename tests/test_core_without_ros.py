"""dlgpr_core works where ROS is not installed: a researcher's `pip install .[train]`.

Every dlgpr_core module is imported in a fresh interpreter in which rclpy, the ROS message
packages and dlgpr_ros cannot be imported (a meta-path finder refuses them, as if they were
not installed); `dlgpr --help` still answers, and its ROS verbs say how to get ROS.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HIDE_ROS = textwrap.dedent(
    """
    import importlib.abc, sys

    HIDDEN = ("rclpy", "dlgpr_ros", "rosidl_runtime_py", "std_msgs", "sensor_msgs",
              "builtin_interfaces", "action_msgs", "rosbags", "launch", "launch_ros")

    class NoRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, NoRos())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_ROS + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_every_core_module_imports_without_ros() -> None:
    proc = _run(
        """
        import importlib, pkgutil
        import dlgpr_core

        names = [m.name for m in pkgutil.walk_packages(dlgpr_core.__path__, "dlgpr_core.")]
        failed = {}
        for name in names:
            if name.endswith("__main__"):
                continue
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = repr(exc)
        assert not any(m.split(".")[0] in HIDDEN for m in sys.modules), "a hidden module loaded"
        print(len(names), "modules", failed)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, _, failed = proc.stdout.strip().partition(" modules ")
    assert int(count) > 60, proc.stdout
    assert failed == "{}", failed


def test_dlgpr_help_without_ros_names_the_missing_verbs() -> None:
    proc = _run(
        """
        import sys
        from dlgpr_core.cli import main
        sys.argv = ["dlgpr", "demo"]
        main()
        """
    )
    assert proc.returncode != 0
    assert "needs the ROS 2 side" in proc.stdout + proc.stderr
    assert "make setup" in proc.stdout + proc.stderr
