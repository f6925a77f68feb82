"""Simulated user node: answers for target places from their annotations, unattended.

It plays the person, so it may read ground truth (the map's annotations): it is the one node
outside the robot-side import-linter contract. Each structured question is answered from its
probe (exact), free text through the user's keyword parser.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor

from dlgpr_core.mapdb.access import DEFAULT_MAP
from dlgpr_core.mapdb.ground_truth import map_annotations
from dlgpr_core.users.fact import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.msg import DialogueState
from dlgpr_ros.spin import spin_nodes
from dlgpr_ros.user_side import UserSide


class SimulatedUserNode(UserSide):
    """Starts dialogues about target places (their vague captions) and answers their questions."""

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
        self.places = map_annotations(
            str(self.get_parameter("map_path").value) or DEFAULT_MAP,
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
        self.start_dialogue(place_id, d0)
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

    def _on_question(self, owner: str, state: DialogueState) -> None:
        user = self._users.get(owner)
        if user is None:
            return
        question = conversions.question_msg_to_core(state.pending_question)
        self.counters["answered"] += 1
        self.say(user.answer(question), state.dialogue_id, int(state.round) + 1)


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros simulated_user_node`."""
    rclpy.init(args=args)
    spin_nodes([SimulatedUserNode()])


if __name__ == "__main__":
    main()
