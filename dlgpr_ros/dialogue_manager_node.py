"""Dialogue manager node: owns every dialogue's state and drives its rounds.

The only stateful node of the graph. Retrieval and questioning are delegated over topics,
so each dialogue is a small state machine here (retrieving -> asking -> awaiting an answer
-> retrieving ...), and everything a restarted peer may have missed is re-sent by a timer
until a retry budget runs out; then the dialogue fails with a detail saying which peer
never answered. The belief and stop rule come from dlgpr_core's engine functions, so the
distributed dialogue stops exactly where the in-process `DialogueEngine` would.

All callbacks share one mutually exclusive group: dialogue state is only ever touched by
one callback at a time without locks, while the heavy retrieval runs in another node.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from dlgpr_core.dialogue.consistency import FactConsistencyReranker
from dlgpr_core.dialogue.engine import DialogueConfig, observe_ranking, stop_reason
from dlgpr_ros import conversions
from dlgpr_ros.msg import (
    CandidateList,
    CandidatePlace,
    DialogueState,
    Localization,
    Question,
    RetrievalRequest,
    Utterance,
)
from dlgpr_ros.qos import TOPIC_QOS

RETRIEVING, ASKING, ANSWERING, DONE = "retrieving", "asking", "awaiting answer", "done"
_STATUS_OF_REASON = {
    "confident": DialogueState.STATUS_CONFIDENT,
    "max_rounds": DialogueState.STATUS_MAX_ROUNDS,
    "no_question": DialogueState.STATUS_MAX_ROUNDS,
    "no_candidates": DialogueState.STATUS_FAILED,
}


@dataclass
class Dialogue:
    """One dialogue as the manager tracks it."""

    dialogue_id: str
    history: list[str]
    questions: list[str] = field(default_factory=list)
    round: int = 0
    phase: str = RETRIEVING
    status: int = DialogueState.STATUS_ACTIVE
    detail: str = ""
    candidates: list[CandidatePlace] = field(default_factory=list)
    confidence: float = 0.0
    sent_at: float = 0.0
    resends: int = 0


class DialogueManagerNode(Node):
    """utterance, candidates, question -> retrieval_request, dialogue_state, localization."""

    def __init__(self, node_name: str = "dialogue_manager", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        d = ParameterDescriptor
        self.declare_parameter("max_rounds", 5, d(description="Questions at most per dialogue."))
        self.declare_parameter(
            "confidence", 0.9, d(description="Top-1 belief that stops a dialogue early.")
        )
        self.declare_parameter("top_k", 10, d(description="Candidates kept in the belief."))
        self.declare_parameter(
            "search_k", 200, d(description="Places requested per round (the answers re-rank them).")
        )
        self.declare_parameter(
            "temperature", 0.05, d(description="Softmax temperature of the belief.")
        )
        self.declare_parameter(
            "request_timeout",
            5.0,
            d(description="Seconds to wait for candidates or a question before re-sending."),
        )
        self.declare_parameter(
            "max_resends", 3, d(description="Re-sends per step before the dialogue fails.")
        )
        self.declare_parameter(
            "max_utterance_bytes", 10_000, d(description="Longer utterances are rejected.")
        )
        self.declare_parameter(
            "max_finished", 1000, d(description="Finished dialogues remembered (late answers).")
        )
        self.declare_parameter("speak", False, d(description="Speak questions with espeak-ng."))
        self.declare_parameter("voice", "en", d(description="espeak-ng voice."))
        self.declare_parameter(
            "update",
            "text",
            d(
                description="Belief update: 'text' (the paper: answers only extend the query) "
                "or 'facts' (also re-rank by agreement with the map's annotations)."
            ),
        )
        self.declare_parameter("map_path", "", d(description="Map (annotations for facts)."))
        self.declare_parameter("annotations", "", d(description="Annotations dir override."))
        self.declare_parameter(
            "epsilon", 0.05, d(description="facts: chance a truthful answer contradicts them.")
        )
        self.declare_parameter(
            "id_prefix",
            "",
            d(description="Dialogue id prefix; empty: random (set it to replay a bag's answers)."),
        )
        p = self.get_parameter
        self.config = DialogueConfig(
            max_rounds=int(p("max_rounds").value),
            top_k=int(p("top_k").value),
            search_k=int(p("search_k").value),
            confidence=float(p("confidence").value) or None,
            temperature=float(p("temperature").value),
        )
        self.timeout = float(p("request_timeout").value)
        self.max_resends = int(p("max_resends").value)
        self.max_bytes = int(p("max_utterance_bytes").value)
        self.max_finished = int(p("max_finished").value)
        self.speak = bool(p("speak").value)
        self.voice = str(p("voice").value)
        if self.speak and shutil.which("espeak-ng") is None:
            self.get_logger().warning(
                "speak is true but espeak-ng is not installed (apt install espeak-ng): "
                "questions are published, not spoken"
            )
        self.update = str(p("update").value)
        self.reranker = self._build_reranker()
        self.dialogues: OrderedDict[str, Dialogue] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self._speakers: list[subprocess.Popen[bytes]] = []
        self._prefix = str(p("id_prefix").value) or uuid.uuid4().hex[:6]
        self._next = 0

        group = MutuallyExclusiveCallbackGroup()
        self._request_pub = self.create_publisher(
            RetrievalRequest, "retrieval_request", TOPIC_QOS["retrieval_request"]
        )
        self._state_pub = self.create_publisher(
            DialogueState, "dialogue_state", TOPIC_QOS["dialogue_state"]
        )
        self._loc_pub = self.create_publisher(
            Localization, "localization", TOPIC_QOS["localization"]
        )
        self.create_subscription(
            Utterance,
            "utterance",
            self._on_utterance,
            TOPIC_QOS["utterance"],
            callback_group=group,
        )
        self.create_subscription(
            CandidateList,
            "candidates",
            self._on_candidates,
            TOPIC_QOS["candidates"],
            callback_group=group,
        )
        self.create_subscription(
            Question, "question", self._on_question, TOPIC_QOS["question"], callback_group=group
        )
        self.create_timer(max(0.05, min(0.5, self.timeout / 4)), self._on_timer, group)

    def _build_reranker(self) -> FactConsistencyReranker | None:
        """Fails at start-up on an unknown mode or a map without annotations: a robot
        silently falling back to the text update would be localising differently than
        configured."""
        if self.update == "text":
            return None
        if self.update != "facts":
            raise ValueError(f"update must be 'text' or 'facts', got {self.update!r}")
        from dlgpr_ros.questioner_node import load_places_by_id

        p = self.get_parameter
        places = load_places_by_id(str(p("map_path").value), str(p("annotations").value))
        if not places:
            raise ValueError("update=facts needs annotated places, the map has none")
        # the belief temperature, so that a contradiction costs exactly a factor epsilon
        return FactConsistencyReranker(
            places, epsilon=float(p("epsilon").value), temperature=self.config.temperature
        )

    # -- helpers ------------------------------------------------------------------
    def _stamp(self) -> Any:
        return self.get_clock().now().to_msg()

    def _new_id(self) -> str:
        """Unique across restarts and across several managers on one DDS domain."""
        self._next += 1
        return f"dlg-{self._prefix}-{self._next}"

    def _state_msg(self, d: Dialogue) -> DialogueState:
        return conversions.dialogue_state(
            dialogue_id=d.dialogue_id,
            round_=d.round,
            status=d.status,
            detail=d.detail,
            history=d.history,
            questions=d.questions,
            candidates=d.candidates,
            confidence=d.confidence,
            stamp=self._stamp(),
        )

    def _publish_state(self, d: Dialogue) -> DialogueState:
        msg = self._state_msg(d)
        self._state_pub.publish(msg)
        return msg

    def _reject(
        self, dialogue_id: str, problem: str, round_: int = 0, known: Dialogue | None = None
    ) -> None:
        """A FAILED state naming the problem for that id (carrying the history and questions
        of a `known` dialogue, so a listener that keeps only the latest state loses nothing);
        without an id, a log and a count."""
        self.counters["rejected"] += 1
        self.get_logger().warning(f"rejected utterance ({dialogue_id or 'no id'}): {problem}")
        if dialogue_id:
            self._state_pub.publish(
                conversions.dialogue_state(
                    dialogue_id=dialogue_id,
                    round_=round_,
                    status=DialogueState.STATUS_FAILED,
                    detail=problem,
                    history=list(known.history) if known else [],
                    questions=list(known.questions) if known else [],
                    candidates=[],
                    confidence=0.0,
                    stamp=self._stamp(),
                )
            )

    def _request(self, d: Dialogue) -> None:
        d.phase, d.sent_at = RETRIEVING, time.monotonic()
        d.detail = "retrieving"
        self._request_pub.publish(
            conversions.retrieval_request(
                dialogue_id=d.dialogue_id,
                round_=d.round,
                query_text=" ".join(d.history),
                k=max(self.config.search_k, self.config.top_k),
                stamp=self._stamp(),
            )
        )

    def _finish(self, d: Dialogue, status: int, detail: str) -> None:
        d.phase, d.status, d.detail = DONE, status, detail
        state = self._publish_state(d)
        if status != DialogueState.STATUS_FAILED and d.candidates:
            self._loc_pub.publish(conversions.localization(state, self._stamp()))
        self.counters["finished"] += 1
        # Forget the oldest finished dialogues beyond the budget; live ones are never dropped.
        finished = [k for k, v in self.dialogues.items() if v.phase == DONE]
        for k in finished[: max(0, len(finished) - self.max_finished)]:
            del self.dialogues[k]

    # -- callbacks ------------------------------------------------------------------
    def _on_utterance(self, msg: Utterance) -> None:
        did = msg.dialogue_id
        size = len(msg.text.encode("utf-8"))
        if size > self.max_bytes:
            problem = f"utterance too long: {size} bytes > {self.max_bytes}"
        elif not msg.text.strip():
            problem = "empty utterance"
        else:
            problem = ""
        if not did:
            if problem:
                self._reject("", problem)
                return
            d = Dialogue(self._new_id(), [msg.text.strip()])
            self.dialogues[d.dialogue_id] = d
            self.counters["started"] += 1
            self._request(d)
            self._publish_state(d)
            return
        d_or_none = self.dialogues.get(did)
        if d_or_none is None:
            self._reject(did, f"unknown dialogue id {did!r}", int(msg.round))
            return
        d = d_or_none
        if d.phase == DONE:
            self._reject(did, f"dialogue {did} already finished ({d.detail})", d.round, d)
            return
        if problem:
            # The person's answer is unusable and the question cannot be re-asked
            # meaningfully by the manager: end the dialogue visibly rather than guess.
            self._finish(d, DialogueState.STATUS_FAILED, f"rejected answer: {problem}")
            return
        if d.phase != ANSWERING or (msg.round and msg.round != d.round + 1):
            self.counters["stale_answers"] += 1
            self.get_logger().warning(
                f"{did}: answer for round {msg.round} ignored while {d.phase} in round {d.round}"
            )
            return
        d.history.append(msg.text.strip())
        d.round += 1
        d.resends = 0
        self._request(d)

    def _on_candidates(self, msg: CandidateList) -> None:
        d = self.dialogues.get(msg.dialogue_id)
        if d is None or d.phase != RETRIEVING or msg.round != d.round:
            self.counters["stale_candidates"] += 1  # a re-sent request answered twice
            return
        hits = tuple(conversions.hit(c) for c in msg.candidates)
        questions = tuple(conversions.core_question(q) for q in d.questions)
        answers = tuple(d.history[1:])
        if self.reranker is not None:
            hits = tuple(self.reranker(hits, questions, answers))
        core = observe_ranking(
            self.config, d.dialogue_id, d.round, d.history[0], answers, questions, hits
        )
        if self.reranker is None:
            d.candidates = list(msg.candidates[: self.config.top_k])
        else:  # the questioner must see the re-ranked belief, as the core engine's does
            d.candidates = [conversions.candidate(h) for h in hits[: self.config.top_k]]
        d.confidence = core.confidence
        d.resends = 0
        reason = stop_reason(self.config, core)
        if reason is None:
            d.phase, d.sent_at, d.detail = ASKING, time.monotonic(), "awaiting question"
            self._publish_state(d)
            return
        detail = {
            "confident": f"belief {d.confidence:.2f} >= {self.config.confidence}",
            "max_rounds": f"round limit {self.config.max_rounds} reached",
            "no_candidates": "the retrieval node returned no places",
        }[reason]
        self._finish(d, _STATUS_OF_REASON[reason], detail)

    def _on_question(self, msg: Question) -> None:
        d = self.dialogues.get(msg.dialogue_id)
        if d is None or d.phase != ASKING or msg.round != d.round:
            self.counters["stale_questions"] += 1
            return
        if not msg.text.strip():
            self._finish(
                d, _STATUS_OF_REASON["no_question"], f"{msg.questioner}: nothing left to ask"
            )
            return
        # Wording, not parsed probes: the parser is lossy, the questioner checks probes.
        norm = " ".join(msg.text.lower().split())
        if any(" ".join(q.lower().split()) == norm for q in d.questions):
            self._finish(d, DialogueState.STATUS_FAILED, f"questioner repeated {msg.text!r}")
            return
        d.questions.append(msg.text)
        d.phase, d.detail, d.resends = ANSWERING, "awaiting answer", 0
        self._publish_state(d)
        self._say(msg.text)

    def _on_timer(self) -> None:
        """Re-sends what a peer (restarted, not yet discovered) did not answer."""
        self._speakers = [s for s in self._speakers if s.poll() is None]
        now = time.monotonic()
        for d in list(self.dialogues.values()):
            if d.phase not in (RETRIEVING, ASKING) or now - d.sent_at < self.timeout:
                continue
            peer = (
                "candidates from the retrieval node"
                if d.phase == RETRIEVING
                else ("question from the questioner node")
            )
            if d.resends >= self.max_resends:
                self._finish(
                    d,
                    DialogueState.STATUS_FAILED,
                    f"no {peer} for round {d.round} after {d.resends + 1} tries "
                    f"of {self.timeout:g} s",
                )
                continue
            d.resends += 1
            self.counters["resends"] += 1
            self.get_logger().warning(f"{d.dialogue_id}: no {peer}; re-sending ({d.resends})")
            if d.phase == RETRIEVING:
                self._request(d)
            else:
                d.sent_at = now
                self._publish_state(d)

    def _say(self, text: str) -> None:
        """Non-blocking: the dialogue goes on while the question is spoken."""
        exe = shutil.which("espeak-ng") if self.speak else None
        if exe:
            self._speakers.append(
                subprocess.Popen(
                    [exe, "-v", self.voice, text],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def destroy_node(self) -> None:
        for s in self._speakers:
            s.kill()
            s.wait()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros dialogue_manager_node`."""
    from dlgpr_ros.bringup import spin_nodes

    rclpy.init(args=args)
    spin_nodes([DialogueManagerNode()])


if __name__ == "__main__":
    main()
