"""Console printer: the dialogue as a person at the robot would follow it.

Everything is printed from `dialogue_state` (plus `localization` for the final position),
never from `utterance` or `question` directly: separate topics have no delivery order between
them over DDS, while each DialogueState carries the whole history in order (description,
questions, answers, this round's candidates). The printer only remembers how much of each
dialogue it has shown, so a state re-sent by the manager's timer prints nothing twice.
"""

from __future__ import annotations

import io
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rich.console import Console
from rich.markup import escape

from dlgpr_ros.msg import DialogueState, Localization
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.spin import spin_nodes

_STATUS = {
    DialogueState.STATUS_CONFIDENT: "confident",
    DialogueState.STATUS_MAX_ROUNDS: "round limit",
    DialogueState.STATUS_FAILED: "failed",
    DialogueState.STATUS_CANCELLED: "cancelled",
}


SHOWN_DIALOGUES = 1000
"""Dialogues whose progress is remembered (the oldest are forgotten: a console that runs for
weeks must not grow by one entry per dialogue)."""


@dataclass
class _Shown:
    """How much of one dialogue has been printed."""

    history: int = 0
    questions: int = 0
    candidates_round: int = -1
    done: bool = False


def _stdout(text: str) -> None:
    print(text, end="", flush=True)


class DialoguePrinter(Node):
    """dialogue_state, localization -> lines on a console (or any `write` callable)."""

    def __init__(
        self,
        node_name: str = "console",
        *,
        write: Callable[[str], None] | None = None,
        color: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """`write` receives each rendered block (tests capture it; default: stdout);
        `color` forces rich's colour codes on or off (default: on for a terminal)."""
        super().__init__(node_name, **kwargs)
        d = ParameterDescriptor
        self.declare_parameter("top", 3, d(description="Candidates printed per round."))
        self.top = int(self.get_parameter("top").value)
        self._write = write or _stdout
        self._color = color
        self._lock = threading.Lock()
        self._shown: OrderedDict[str, _Shown] = OrderedDict()
        self.create_subscription(
            DialogueState, "dialogue_state", self.on_state, TOPIC_QOS["dialogue_state"]
        )
        self.create_subscription(
            Localization, "localization", self.on_localization, TOPIC_QOS["localization"]
        )

    def _emit(self, lines: list[str]) -> None:
        """Renders rich markup to text; one write per block keeps dialogues from
        interleaving mid-line when two are live."""
        if not lines:
            return
        buf = io.StringIO()
        tty = (
            self._color
            if self._color is not None
            else self._write is _stdout and sys.stdout.isatty()
        )
        console = Console(file=buf, force_terminal=tty, no_color=not tty, width=100)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        self._write(buf.getvalue())

    def on_state(self, msg: DialogueState) -> None:
        """Prints what this state adds to its dialogue: new description/answers and
        questions in dialogue order, the round's candidates, the outcome."""
        did = msg.dialogue_id
        if not did:  # a refused description (see its request_id): no dialogue to follow
            self._emit([f"[bold red]Refused:[/] {escape(msg.detail)}"])
            return
        lines: list[str] = []
        with self._lock:
            shown = self._shown.get(did)
            if shown is None:
                shown = self._shown[did] = _Shown()
                while len(self._shown) > SHOWN_DIALOGUES:
                    self._shown.popitem(last=False)
            if shown.done:
                return
            tag = f"[dim]\\[{escape(did)}][/dim]"
            # history[0] is d0; history[i] answers questions[i-1]: print interleaved
            while shown.history < len(msg.history) or shown.questions < len(msg.questions):
                if shown.history <= shown.questions and shown.history < len(msg.history):
                    text = escape(msg.history[shown.history])
                    label = "Person" if shown.history == 0 else "Answer"
                    lines.append(f"{tag} [bold green]{label}:[/] {text}")
                    shown.history += 1
                elif shown.questions < len(msg.questions):
                    text = escape(msg.questions[shown.questions])
                    lines.append(f"{tag} [bold cyan]Robot:[/] {text}")
                    shown.questions += 1
                else:
                    break
            if msg.candidates and int(msg.round) > shown.candidates_round:
                shown.candidates_round = int(msg.round)
                lines.extend(self._candidate_lines(tag, msg))
            if msg.done:
                shown.done = True
                status = _STATUS.get(msg.status, str(msg.status))
                if msg.status == DialogueState.STATUS_FAILED:
                    lines.append(f"{tag} [bold red]Failed:[/] {escape(msg.detail)}")
                else:
                    lines.append(
                        f"{tag} [bold]Done[/] after {msg.round} question(s) ({status}: "
                        f"{escape(msg.detail)})"
                    )
        self._emit(lines)

    def _candidate_lines(self, tag: str, msg: DialogueState) -> list[str]:
        lines = [f"{tag} [yellow]Round {msg.round} candidates:[/]"]
        for c in msg.candidates[: self.top]:
            lines.append(
                f"{tag}   {c.rank}. {escape(c.place_id)}  confidence {c.belief:.2f}  "
                f"(score {c.score:.3f})"
            )
        return lines

    def on_localization(self, msg: Localization) -> None:
        """The answer of the whole dialogue: the place and where it is."""
        tag = f"[dim]\\[{escape(msg.dialogue_id)}][/dim]"
        kind = "confident" if msg.confident else "best guess"
        self._emit(
            [
                f"{tag} [bold magenta]Localized:[/] {escape(msg.place_id)} at "
                f"lat {msg.fix.latitude:.6f}, lon {msg.fix.longitude:.6f} "
                f"(confidence {msg.confidence:.2f}, {kind}, {msg.rounds_used} question(s))"
            ]
        )


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros console_node`."""
    rclpy.init(args=args)
    spin_nodes([DialoguePrinter()])


if __name__ == "__main__":
    main()
