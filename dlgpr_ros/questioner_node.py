"""Questioner node: picks the next question of a dialogue from its published state.

Stateless on purpose: a DialogueState awaiting a question carries everything needed
(candidates with their belief, the answered questions with their structured probes), so a
questioner that was restarted mid-dialogue asks exactly what a never-restarted one would,
and the dialogue manager can simply re-send a state it got no question for. What it knows
about the candidates is the map's image evidence (`dlgpr map evidence`).

That evidence is read from the map as places first come up and kept. It also listens to the
retrieval node's `candidates` (`prefetch_evidence`) and reads the evidence of every place
ranked there while the dialogue manager re-ranks them, as the manager's answer update reads
it: the candidates of the state that follows are among them, so the question no longer
waits on the map (reading a place's evidence costs a few ms; top-50 candidates new to the
questioner made its question take twice as long over ROS as in-process, where the update and
the questioner share one cache).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from dlgpr_core.dialogue.questioner import Questioner
from dlgpr_core.dialogue.registry import QUESTIONERS, make_questioner
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.access import DEFAULT_MAP
from dlgpr_ros import conversions
from dlgpr_ros.msg import CandidateList, DialogueState, Question
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.spin import spin_nodes

if TYPE_CHECKING:
    from dlgpr_core.mapdb.database import MapDatabase


def map_evidence(map_path: str, annotator: str) -> tuple[MapDatabase, EvidenceSource, int]:
    """The map (kept open: evidence is read as candidates come), its evidence of
    `annotator`, and how many images that annotator has done."""
    from dlgpr_core.mapdb.database import MapDatabase

    db = MapDatabase.open(Path(map_path or DEFAULT_MAP))
    done = sum(r.images for r in db.evidence.runs() if r.annotator == annotator)
    return db, EvidenceSource.of_map(db.evidence, annotator), done


def build_questioner(name: str, evidence: EvidenceSource, top_k: int, seed: int) -> Questioner:
    """The named questioner over what the map's images show (never ground truth); top_k 0:
    every candidate the dialogue's belief covers."""
    return make_questioner(name, evidence=evidence, top_k=top_k or None, seed=seed)


class QuestionerNode(Node):
    """dialogue_state (awaiting a question) -> question."""

    def __init__(self, node_name: str = "questioner", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        desc = ParameterDescriptor
        self.declare_parameter(
            "questioner",
            "info-gain",
            desc(description=f"Questioner: one of {sorted(QUESTIONERS)}."),
        )
        self.declare_parameter(
            "map_path",
            "",
            desc(description=f"Map whose places are asked about; empty: {DEFAULT_MAP}."),
        )
        self.declare_parameter(
            "evidence", "learned", desc(description="Annotator whose map evidence is used.")
        )
        self.declare_parameter(
            "top_k",
            0,
            desc(
                description="Candidates the questioner reasons about (0: every candidate "
                "of the dialogue's belief)."
            ),
        )
        self.declare_parameter("seed", 0, desc(description="Seed of the random questioner."))
        self.declare_parameter(
            "prefetch_evidence",
            True,
            desc(
                description="Read the evidence of the places on `candidates` while the "
                "dialogue manager re-ranks them, so that the question does not wait on the map."
            ),
        )
        self.counters: Counter[str] = Counter()
        name = str(self.get_parameter("questioner").value)
        annotator = str(self.get_parameter("evidence").value)
        self._db, evidence, done = map_evidence(
            str(self.get_parameter("map_path").value), annotator
        )
        if not done:
            self.get_logger().warning(
                f"the map has no {annotator!r} evidence: the questioner has nothing to ask "
                f"about (run `dlgpr map evidence --map <map> --annotator {annotator}`)"
            )
        self.evidence = evidence
        """The map's evidence as this questioner reads it (kept once read)."""
        self.questioner = build_questioner(
            name,
            evidence,
            int(self.get_parameter("top_k").value),
            int(self.get_parameter("seed").value),
        )
        self._pub = self.create_publisher(Question, "question", TOPIC_QOS["question"])
        # One group: a state is asked about only once the prefetch before it is done (and
        # the evidence cache is never filled from two threads).
        group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            DialogueState,
            "dialogue_state",
            self._on_state,
            TOPIC_QOS["dialogue_state"],
            callback_group=group,
        )
        if bool(self.get_parameter("prefetch_evidence").value):
            self.create_subscription(
                CandidateList,
                "candidates",
                self._on_candidates,
                TOPIC_QOS["candidates"],
                callback_group=group,
            )
        self.get_logger().info(f"{name} questioner over {annotator} evidence of {done} images")

    def _on_candidates(self, msg: CandidateList) -> None:
        """Reads ahead the evidence of a round's ranked places (see the module docstring)."""
        ids = [c.place_id for c in msg.candidates]
        try:
            self.counters["prefetched"] += self.evidence.prefetch(ids)
        except Exception as exc:  # a failed read-ahead is retried when the question needs it
            self.counters["errors"] += 1
            self.get_logger().error(f"cannot read evidence for {msg.dialogue_id}: {exc}")

    def _on_state(self, msg: DialogueState) -> None:
        if msg.phase != DialogueState.PHASE_AWAITING_QUESTION:
            return
        try:
            q = self.questioner.ask(conversions.core_state(msg))
        except Exception as exc:  # one malformed state must not stop the other dialogues
            self.counters["errors"] += 1
            self.get_logger().error(f"cannot ask in {msg.dialogue_id}: {exc}")
            return
        # An empty question tells the manager there is nothing left to ask.
        self._pub.publish(
            conversions.question(
                q,
                dialogue_id=msg.dialogue_id,
                round_=int(msg.round),
                questioner=self.questioner.name,
                stamp=self.get_clock().now().to_msg(),
            )
        )
        self.counters["asked"] += 1

    def destroy_node(self) -> None:
        self._db.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros questioner_node`."""
    rclpy.init(args=args)
    spin_nodes([QuestionerNode()])


if __name__ == "__main__":
    main()
