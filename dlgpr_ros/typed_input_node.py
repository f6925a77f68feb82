"""Typed input node: a person at a keyboard (or stdin) talking to the robot.

What is typed answers the question the robot is waiting on (a dialogue the typist started,
else any dialogue awaiting an answer, such as one a `localize` goal started), or starts a
new dialogue when none is waiting. Questions are logged; the console node prints the whole
dialogue.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from std_msgs.msg import String

from dlgpr_ros.msg import DialogueState
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.spin import spin_nodes
from dlgpr_ros.user_side import UserSide


class TypedInputNode(UserSide):
    """typed_text (a person at a keyboard, or stdin) -> utterance; questions are logged."""

    OWNER = "typed"

    def __init__(self, node_name: str = "typed_input", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter(
            "read_stdin", False, ParameterDescriptor(description="Also read lines from stdin.")
        )
        self._waiting_foreign: dict[str, int] = {}
        """Dialogues of others awaiting an answer: id -> round (dropped once they move on)."""
        self.create_subscription(
            String, "typed_text", lambda m: self.submit(m.data), TOPIC_QOS["typed_text"]
        )
        self.stdin_closed = threading.Event()
        """Set when stdin reaches its end (Ctrl-D): an interactive session is over."""
        if bool(self.get_parameter("read_stdin").value):
            threading.Thread(target=self._read_stdin, daemon=True).start()

    def current(self) -> str | None:
        """The typist's live dialogue, if any."""
        with self._lock:
            for did in reversed(list(self.owner_of)):
                states = self.states.get(did)
                if states and not states[-1].done:
                    return did
        return None

    def submit(self, text: str) -> None:
        """Answers the dialogue waiting on an answer, or starts one when none is."""
        did = self.current()
        if did is not None:
            self.say(text, did)
            return
        with self._lock:
            foreign = next(reversed(self._waiting_foreign.items()), None)
        if foreign is not None:
            self.say(text, foreign[0], foreign[1] + 1)
        else:
            self.start_dialogue(self.OWNER, text)

    def _on_foreign_state(self, msg: DialogueState) -> None:
        self._waiting_foreign.pop(msg.dialogue_id, None)
        if msg.phase == DialogueState.PHASE_AWAITING_ANSWER:
            self._waiting_foreign[msg.dialogue_id] = int(msg.round)

    def _on_question(self, owner: str, state: DialogueState) -> None:
        self.get_logger().info(f"[{state.dialogue_id}] {state.pending_question.text}")

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.submit(line)
        self.stdin_closed.set()


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros typed_input_node` (set read_stdin:=true to type here)."""
    rclpy.init(args=args)
    spin_nodes([TypedInputNode()])


if __name__ == "__main__":
    main()
