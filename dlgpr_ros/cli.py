"""The ROS verbs of the `dlgpr` command: `dlgpr demo` and `dlgpr bringup`.

Registered as a plugin of the `dlgpr` command (entry-point group ``dlgpr.commands``, whose
metadata the colcon install writes; see CMakeLists.txt), so that dlgpr_core never imports
ROS. rclpy is imported inside the commands: `dlgpr --help` stays instant.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dlgpr_core.cli.common import console

if TYPE_CHECKING:
    from dlgpr_core.dialogue.session import DialogueSession
    from dlgpr_ros.bringup import Graph

USERS = ("simulated", "typed", "speech")


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo city and map are kept.")] = Path(
        "data/demo"
    ),
    user: Annotated[
        str,
        typer.Option(
            help="Who answers: 'simulated' (a user who knows a place), 'typed' (you, in "
            "this terminal) or 'speech' (you, into the microphone)."
        ),
    ] = "simulated",
    dialogues: Annotated[int, typer.Option(min=1, help="Simulated dialogues to run.")] = 3,
    questioner: Annotated[str, typer.Option(help="info-gain or random.")] = "info-gain",
    update: Annotated[
        str,
        typer.Option(
            help="'evidence' (default: answers re-score places by their image "
            "evidence) or 'text' (the paper: answers only extend the query)."
        ),
    ] = "evidence",
    evidence: Annotated[
        str, typer.Option(help="The annotator that derives the map's evidence from its images.")
    ] = "learned",
    places: Annotated[int, typer.Option(min=10)] = 300,
    seed: Annotated[int, typer.Option()] = 7,
    record: Annotated[Path | None, typer.Option(help="Record every message to MCAP.")] = None,
) -> None:
    """The main job: full dialogues through the ROS 2 node graph on the embedded map.

    A person (simulated, typed or spoken) describes a place vaguely; the robot asks
    questions until it is confident or has asked five, then reports the place and its
    position. What the robot knows of the map comes from its images (the learned
    annotator's evidence); only the simulated person knows the city's ground truth.
    """
    from dlgpr_core.demo import ensure_demo_city
    from dlgpr_ros.bringup import running

    if user not in USERS:
        raise ValueError(f"--user takes {', '.join(USERS)}, not {user!r}")
    annotations, map_dir = ensure_demo_city(workdir, places, seed, evidence, say=console.print)
    overrides: dict[str, object] = {
        "map_path": str(map_dir),
        "questioner.questioner": questioner,
        "dialogue_manager.update": update,
        "evidence": evidence,
    }
    if user == "typed":
        overrides["typed_input.read_stdin"] = True
    if user == "speech":
        overrides["speech.use_microphone"] = True
    mode = "speech" if user == "speech" else "typed"
    with running(None, overrides, mode, simulate=user == "simulated", record=record) as graph:
        if user == "simulated":
            _simulated_dialogues(graph, annotations, dialogues, seed)
            return
        console.print(
            "[bold]Describe where you are[/] "
            + ("(type a line, Enter; Ctrl-D to stop)" if user == "typed" else "(speak)")
        )
        with contextlib.suppress(KeyboardInterrupt):
            if user == "typed":
                typed = graph.node("typed_input")
                graph.run_until(typed.stdin_closed.is_set, timeout=float("inf"))
                # Let a dialogue whose last answer was just typed finish and print.
                graph.run_until(lambda: typed.current() is None, timeout=10)
            else:
                graph.run_until(lambda: False, timeout=float("inf"))


def _simulated_dialogues(graph: Graph, annotations: Path, n: int, seed: int) -> None:
    """`n` dialogues, one after another, with a simulated person at a random place each."""
    from dlgpr_core.data.annotations import read_annotations
    from dlgpr_core.data.records import namespaced_place_id

    dm, sim = graph.node("dialogue_manager"), graph.node("simulated_user")
    annotated = read_annotations(annotations)
    targets = random.Random(seed).sample(annotated, min(n, len(annotated)))
    found = 0
    for place in targets:
        target = namespaced_place_id(place.city, place.place_id)
        console.rule(f"a person standing at {target}")
        sim.start(target)

        def session(target: str = target) -> DialogueSession | None:
            did = sim.dialogue_of(target)
            return dm.sessions.get(did) if did else None

        if not graph.run_until(lambda: (s := session()) is not None and s.done, 120):
            console.print(f"[red]no answer from the graph for {target} within 120 s[/]")
            continue
        graph.run_until(lambda: False, 0.5)  # let the printer catch up
        done = session()
        assert done is not None
        final = done.state
        best = final.candidates[0].place_id if final.candidates else None
        found += best == target
        console.print(
            f"true place {target}: "
            + ("[green]found[/]" if best == target else f"[yellow]robot says {best}[/]")
        )
    console.print(f"{found} of {len(targets)} places found")


def bringup(ctx: typer.Context) -> None:
    """Start the ROS 2 node graph without `ros2 launch` (pip-only robots); --help for options.

    The very nodes and parameters that launch/dialogue.launch.py starts, from the same
    config/nodes.yaml and config/dialogue.yaml, in one multi-threaded executor.
    """
    from dlgpr_ros.bringup import main as bringup_main

    raise typer.Exit(bringup_main(ctx.args))


def register(app: typer.Typer) -> None:
    """Entry point of the ``dlgpr.commands`` group: adds the ROS verbs to `dlgpr`."""
    app.command()(demo)
    app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(bringup)
