"""The `dlgpr` command line: generate data, build and query maps, evaluate, run the robot.

The ROS verbs (`dlgpr demo`, `dlgpr bringup`) belong to the ROS package: `dlgpr_ros`
registers them through the entry-point group ``dlgpr.commands`` (its colcon install ships
the metadata), so this library never imports ROS and still offers one command. Where the ROS
side is not installed, those verbs exist and say how to get it.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from dlgpr_core.cli import map_commands, retriever_commands
from dlgpr_core.cli.common import err_console
from dlgpr_core.cli.eval_command import dialogue_eval, eval_compare
from dlgpr_core.cli.search_eval_command import search_eval
from dlgpr_core.cli.synth_command import synth

PLUGIN_GROUP = "dlgpr.commands"
"""Entry points ``name = module:register``; ``register(app)`` adds commands to `app`."""
ROS_VERBS = ("demo", "bringup")

app = typer.Typer(
    help="Dialogue place recognition: find where you are from what a person says.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(synth)
app.add_typer(map_commands.app, name="map")
retriever_commands.app.command("search-eval")(search_eval)
app.add_typer(retriever_commands.app, name="retriever")
app.command("eval")(dialogue_eval)
app.command("eval-compare")(eval_compare)


def _missing_ros(verb: str, reason: str) -> None:
    def command() -> None:
        raise typer.BadParameter(
            f"`dlgpr {verb}` needs the ROS 2 side ({reason}): run `make setup` and "
            "`source scripts/env.sh` (rclpy wheels + the colcon-built dlgpr_ros package)"
        )

    command.__doc__ = f"Needs the ROS 2 side (dlgpr_ros), which is not installed here: {reason}."
    app.command(verb, hidden=False)(command)


def load_plugins(target: typer.Typer = app) -> dict[str, str]:
    """Registers every installed plugin's commands; returns plugin name -> the error of each
    plugin that could not be loaded (its commands are then missing, and said so)."""
    failed: dict[str, str] = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()(target)
        except Exception as exc:  # a broken plugin must not take the other commands down
            failed[ep.name] = f"{type(exc).__name__}: {exc}"
    return failed


_failed = load_plugins()
_names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
for _verb in ROS_VERBS:
    if _verb not in _names:
        _missing_ros(_verb, "; ".join(_failed.values()) or "dlgpr_ros is not installed")


def main() -> None:
    """Console entry point; user-fixable errors print a message and exit with code 2."""
    from dlgpr_core.mapdb.errors import MapError

    try:
        app()
    except (MapError, FileNotFoundError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


__all__ = ["PLUGIN_GROUP", "app", "load_plugins", "main"]
