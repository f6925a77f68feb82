"""Questioner node: picks the next question of a dialogue from its published state.

Stateless on purpose: everything it needs (candidates, history, questions already asked)
is in the DialogueState message, and earlier questions are turned back into probes with
`parse_question`, so a questioner that was restarted mid-dialogue never repeats a probe
and the dialogue manager can simply re-send a state it got no question for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from dlgpr_core.dialogue.engine import DialogueConfig
from dlgpr_core.dialogue.engine import DialogueState as CoreDialogueState
from dlgpr_core.dialogue.questioners import Questioner, make_questioner
from dlgpr_core.dialogue.questions import Question as CoreQuestion
from dlgpr_ros import conversions
from dlgpr_ros.msg import DialogueState, Question
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.retrieval_node import DEFAULT_MAP

if TYPE_CHECKING:
    from dlgpr_core.data.annotations import PlaceAnnotation

MAX_RETRIES = 20
"""Picks tried per state before giving up (then the manager ends the dialogue)."""


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?. ")


def load_places_by_id(
    map_path: Path | str, annotations: Path | str = ""
) -> dict[str, PlaceAnnotation]:
    """Annotated places by namespaced id, as `dlgpr demo` reads them (``<root>/Annotations/
    <city>.jsonl``) for every data set the map was built from; `annotations` names an
    Annotations directory instead (a map whose data set moved)."""
    from dlgpr_core.data.annotations import places_by_id, read_annotations
    from dlgpr_core.mapdb.database import MapDatabase

    if annotations:
        dirs = [Path(annotations)]
    else:
        with MapDatabase.open(Path(map_path or DEFAULT_MAP)) as db:
            dirs = [Path(s.root) / "Annotations" for s in db.sources()]
    places: dict[str, PlaceAnnotation] = {}
    for d in dirs:
        for path in sorted(d.glob("*.jsonl")):
            places.update(places_by_id(read_annotations(path)))
    return places


def build_questioner(
    name: str, places: Mapping[str, PlaceAnnotation], top_k: int, seed: int
) -> Questioner:
    """Only the arguments each registered questioner takes."""
    kwargs: dict[str, Any] = {"places_by_id": places, "top_k": top_k}
    if name == "random":
        kwargs["seed"] = seed
    return make_questioner(name, **kwargs)


class QuestionerNode(Node):
    """dialogue_state (awaiting a question) -> question."""

    def __init__(self, node_name: str = "questioner", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        desc = ParameterDescriptor
        self.declare_parameter(
            "questioner", "info-gain", desc(description="Questioner: info-gain or random.")
        )
        self.declare_parameter(
            "map_path",
            "",
            desc(description=f"Map whose annotations are read; empty: {DEFAULT_MAP}."),
        )
        self.declare_parameter(
            "annotations", "", desc(description="Annotations directory overriding the map's.")
        )
        self.declare_parameter(
            "top_k", 10, desc(description="Candidates the questioner reasons about.")
        )
        self.declare_parameter(
            "temperature", 0.05, desc(description="Belief softmax temperature (as the DM's).")
        )
        self.declare_parameter("seed", 0, desc(description="Seed of the random questioner."))
        self.counters: Counter[str] = Counter()
        name = str(self.get_parameter("questioner").value)
        top_k = int(self.get_parameter("top_k").value)
        places = load_places_by_id(
            str(self.get_parameter("map_path").value),
            str(self.get_parameter("annotations").value),
        )
        self.questioner = build_questioner(
            name, places, top_k, int(self.get_parameter("seed").value)
        )
        self.config = DialogueConfig(
            top_k=top_k, temperature=float(self.get_parameter("temperature").value)
        )
        self._pub = self.create_publisher(Question, "question", TOPIC_QOS["question"])
        self.create_subscription(
            DialogueState,
            "dialogue_state",
            self._on_state,
            TOPIC_QOS["dialogue_state"],
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.get_logger().info(f"{name} questioner over {len(places)} annotated places")

    def _ask(self, state: CoreDialogueState, asked: Sequence[str]) -> CoreQuestion | None:
        """A question whose probe and wording are both new.

        Earlier questions are recovered from their text by `parse_question`, which can miss
        a value it has no word for; then the questioner may pick the same probe again. Such
        a pick is added to the asked set and the questioner asked again, so nothing is
        repeated even by a questioner that never saw the dialogue before.
        """
        texts = {_norm(t) for t in asked}
        for _ in range(MAX_RETRIES):
            q = self.questioner.ask(state)
            if q is None:
                return None
            if _norm(q.text) not in texts and all(q.key != o.key for o in state.questions):
                return q
            self.counters["repeats_avoided"] += 1
            state = replace(state, questions=(*state.questions, q))
        return None

    def _on_state(self, msg: DialogueState) -> None:
        # A question is due exactly when every asked question has its answer: history is
        # d0 + one answer per question, and the manager has not stopped the dialogue.
        # (No candidates yet: the manager is still retrieving round 0.)
        if msg.done or not msg.candidates or len(msg.questions) != len(msg.history) - 1:
            return
        try:
            q = self._ask(conversions.core_state(msg, self.config), msg.questions)
        except Exception as exc:  # one malformed state must not stop the other dialogues
            self.counters["errors"] += 1
            self.get_logger().error(f"cannot ask in {msg.dialogue_id}: {exc}")
            return
        # An empty question tells the manager there is nothing left to ask.
        out = conversions.question(
            q if q is not None else CoreQuestion("", "free", ""),
            dialogue_id=msg.dialogue_id,
            round_=int(msg.round),
            questioner=self.questioner.name,
            stamp=self.get_clock().now().to_msg(),
        )
        self._pub.publish(out)
        self.counters["asked"] += 1


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros questioner_node`."""
    from dlgpr_ros.bringup import spin_nodes

    rclpy.init(args=args)
    spin_nodes([QuestionerNode()])


if __name__ == "__main__":
    main()
