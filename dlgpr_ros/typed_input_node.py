"""The non-speech sources of utterances: a typing person and a simulated user.

Both speak the manager's protocol from the user's side: the first utterance starts a
dialogue (empty dialogue_id) and the id the manager assigns is learnt from the first
DialogueState whose d0 is that text; later utterances answer that dialogue's question.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String

from dlgpr_core.dialogue.user import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.msg import DialogueState, Question, Utterance
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.questioner_node import load_places_by_id


class _UserSide(Node):
    """Claims dialogue ids by their first text and keeps each dialogue's latest state."""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}
        """First text -> owner key, until the manager's first state names the id."""
        self._pending_any: str | None = None
        """Owner of the next dialogue started by someone else (a spoken description, whose
        text is only known once Whisper has heard it)."""
        self.owner_of: dict[str, str] = {}
        """Dialogue id -> owner key."""
        self.states: dict[str, list[DialogueState]] = {}
        """Dialogue id -> every state received, in order."""
        self.counters: Counter[str] = Counter()
        group = MutuallyExclusiveCallbackGroup()
        self._pub = self.create_publisher(Utterance, "utterance", TOPIC_QOS["utterance"])
        self.create_subscription(
            DialogueState,
            "dialogue_state",
            self._on_state,
            TOPIC_QOS["dialogue_state"],
            callback_group=group,
        )
        self.create_subscription(
            Question,
            "question",
            self._on_question_msg,
            TOPIC_QOS["question"],
            callback_group=group,
        )

    def _say(self, text: str, dialogue_id: str = "", round_: int = 0) -> None:
        self._pub.publish(
            conversions.utterance(
                text, dialogue_id=dialogue_id, round_=round_, stamp=self.get_clock().now().to_msg()
            )
        )

    def _start(self, owner: str, text: str) -> None:
        with self._lock:
            self._pending[text.strip()] = owner
        self._say(text)

    def _on_state(self, msg: DialogueState) -> None:
        with self._lock:
            if msg.dialogue_id not in self.owner_of and msg.history:
                owner = self._pending.pop(msg.history[0], None)
                if owner is None:
                    owner, self._pending_any = self._pending_any, None
                if owner is None:
                    return
                self.owner_of[msg.dialogue_id] = owner
            if msg.dialogue_id in self.owner_of:
                self.states.setdefault(msg.dialogue_id, []).append(msg)

    def _on_question_msg(self, msg: Question) -> None:
        with self._lock:
            owner = self.owner_of.get(msg.dialogue_id)
        if owner is not None and msg.text:
            self._on_question(owner, msg)

    def _on_question(self, owner: str, msg: Question) -> None:
        raise NotImplementedError


class SimulatedUserNode(_UserSide):
    """Answers for target places from their annotations (FactUser): unattended dialogues."""

    def __init__(self, node_name: str = "simulated_user", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        d = ParameterDescriptor
        self.declare_parameter("map_path", "", d(description="Map whose places are targets."))
        self.declare_parameter("annotations", "", d(description="Annotations dir override."))
        self.declare_parameter(
            "targets", "", d(description="Comma-separated place ids to look for at start.")
        )
        self.declare_parameter(
            "start_delay", 2.0, d(description="Seconds before starting (peer discovery).")
        )
        self.places = load_places_by_id(
            str(self.get_parameter("map_path").value),
            str(self.get_parameter("annotations").value),
        )
        self._users: dict[str, FactUser] = {}
        targets = [t.strip() for t in str(self.get_parameter("targets").value).split(",")]
        self._targets = [t for t in targets if t]
        if self._targets:
            self._once = self.create_timer(
                float(self.get_parameter("start_delay").value), self._start_targets
            )

    def _start_targets(self) -> None:
        self._once.cancel()
        for t in self._targets:
            self.start(t)

    def start(self, place_id: str, text: str | None = None) -> str:
        """Starts a dialogue about `place_id` with its caption (or `text`); returns the d0."""
        place = self.places[place_id]
        self._users[place_id] = FactUser(place)
        d0 = (text or place.caption).strip()
        self._start(place_id, d0)
        return d0

    def adopt_next(self, place_id: str) -> None:
        """Answers for `place_id` in the next dialogue anyone else starts: the person
        describes the place aloud, the simulated user then answers the questions."""
        self._users[place_id] = FactUser(self.places[place_id])
        with self._lock:
            self._pending_any = place_id

    def dialogue_of(self, place_id: str) -> str | None:
        """The id the manager gave the latest dialogue about `place_id`, once known."""
        with self._lock:
            return next((k for k, v in reversed(self.owner_of.items()) if v == place_id), None)

    def _on_question(self, owner: str, msg: Question) -> None:
        user = self._users.get(owner)
        if user is None:
            return
        self.counters["answered"] += 1
        self._say(user.answer(msg.text), msg.dialogue_id, int(msg.round) + 1)


class TypedInputNode(_UserSide):
    """typed_text (a person at a keyboard, or stdin) -> utterance; questions are logged."""

    OWNER = "typed"

    def __init__(self, node_name: str = "typed_input", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter(
            "read_stdin", False, ParameterDescriptor(description="Also read lines from stdin.")
        )
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
        """Answers the live dialogue, or starts one when none is live."""
        did = self.current()
        if did is None:
            self._start(self.OWNER, text)
        else:
            self._say(text, did)

    def _on_question(self, owner: str, msg: Question) -> None:
        self.get_logger().info(f"[{msg.dialogue_id}] {msg.text}")

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.submit(line)
        self.stdin_closed.set()


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros typed_input_node` (set read_stdin:=true to type here)."""
    from dlgpr_ros.bringup import spin_nodes

    rclpy.init(args=args)
    spin_nodes([TypedInputNode()])


def sim_main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros simulated_user_node`."""
    from dlgpr_ros.bringup import spin_nodes

    rclpy.init(args=args)
    spin_nodes([SimulatedUserNode()])


if __name__ == "__main__":
    main()
