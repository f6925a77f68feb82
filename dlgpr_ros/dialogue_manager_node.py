"""Dialogue manager node: feeds every dialogue's session and publishes what it returns.

The rules of a dialogue (phases, re-sends, the repeat rule, the belief, the answer update,
the stop rule) live in `dlgpr_core.dialogue.session`, the bookkeeping of many dialogues in
`dlgpr_core.dialogue.sessions`; this node only converts messages into events and the
resulting actions into messages, so the graph runs exactly the dialogue `DialogueEngine`
runs. The `localize` action (`localize_server.py`) drives the same sessions.

All callbacks (the action's too) share one mutually exclusive group: dialogue state is
touched by one callback at a time, without locks; the heavy retrieval runs in another node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from dlgpr_core.dialogue import session as act
from dlgpr_core.dialogue.questions import free_question
from dlgpr_core.dialogue.sessions import PoolAction, Reject, SessionPool
from dlgpr_core.dialogue.state import Status
from dlgpr_core.speech.speaker import QuestionSpeaker
from dlgpr_ros import conversions as cv
from dlgpr_ros import manager_params as params
from dlgpr_ros.answer_update import answer_update
from dlgpr_ros.localize_server import LocalizeServer
from dlgpr_ros.msg import (
    CandidateList,
    DialogueState,
    Localization,
    Question,
    RetrievalRequest,
    Utterance,
)
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.spin import spin_nodes

LOCALIZED = (Status.CONFIDENT, Status.MAX_ROUNDS)
"""Ends that publish a Localization (a failed or cancelled dialogue claims no place)."""


class DialogueManagerNode(Node):
    """utterance, candidates, question, localize goals -> retrieval_request, dialogue_state,
    localization, localize feedback and results."""

    def __init__(self, node_name: str = "dialogue_manager", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = params.declare(self)
        self.config = params.dialogue_config(p)
        self.reranker = answer_update(p, self.config.temperature)
        self.sessions = SessionPool(
            self.config, self.reranker, id_prefix=params.id_prefix(p), limits=params.pool_limits(p)
        )
        self.speaker = QuestionSpeaker(bool(p["speak"]), str(p["voice"]))
        if self.speaker.missing:
            self.get_logger().warning(QuestionSpeaker.MISSING)
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
        for msg_type, topic, callback in (
            (Utterance, "utterance", self._on_utterance),
            (CandidateList, "candidates", self._on_candidates),
            (Question, "question", self._on_question),
        ):
            self.create_subscription(
                msg_type, topic, callback, TOPIC_QOS[topic], callback_group=group
            )
        period = max(0.05, min(0.5, (self.config.request_timeout or 1.0) / 4))
        self.create_timer(period, lambda: self._apply(self.sessions.tick()), group)
        self.localize = LocalizeServer(
            self, self._start, self._cancel, group, max_goals=int(p["max_goals"])
        )

    @property
    def counters(self) -> Counter[str]:
        return self.sessions.counters

    # -- messages in ------------------------------------------------------------------------
    def _on_utterance(self, msg: Utterance) -> None:
        self._apply(
            self.sessions.on_utterance(msg.dialogue_id, msg.text, int(msg.round), msg.request_id)
        )

    def _on_candidates(self, msg: CandidateList) -> None:
        ranking = [cv.hit(c) for c in msg.candidates]
        self._apply(self.sessions.on_candidates(msg.dialogue_id, int(msg.round), ranking))

    def _on_question(self, msg: Question) -> None:
        try:
            q = cv.question_msg_to_core(msg) if msg.text.strip() else None
        except ValueError as exc:  # a malformed probe: the words still ask something
            self.get_logger().warning(f"{msg.dialogue_id}: {exc}; read as free text")
            q = free_question(msg.text)
        self._apply(self.sessions.on_question(msg.dialogue_id, int(msg.round), q, msg.questioner))

    def _start(self, text: str, request_id: str) -> str | None:
        did, actions = self.sessions.start(text, request_id)
        self._apply(actions)
        return did

    def _cancel(self, dialogue_id: str, detail: str) -> None:
        self._apply(self.sessions.cancel(dialogue_id, detail))

    # -- actions out ------------------------------------------------------------------------
    def _apply(self, actions: Sequence[PoolAction]) -> None:
        stamp = self.get_clock().now().to_msg()
        for a in actions:
            if isinstance(a, act.RequestRetrieval):
                self._request_pub.publish(cv.retrieval_request(a, stamp))
            elif isinstance(a, act.PublishState):
                self._state_pub.publish(cv.dialogue_state(a.state, stamp))
            elif isinstance(a, act.Ask):
                self.speaker.say(a.question.text)
            elif isinstance(a, act.Finish) and a.state.status in LOCALIZED and a.state.candidates:
                self._loc_pub.publish(cv.localization(cv.dialogue_state(a.state, stamp), stamp))
            elif isinstance(a, act.Notice) and a.message:
                self.get_logger().warning(a.message)
            elif isinstance(a, Reject):
                self._log_reject(a)
                if a.dialogue_id or a.request_id:
                    self._state_pub.publish(cv.rejected_state(a, stamp))
        self.localize.observe(actions)

    def _log_reject(self, a: Reject) -> None:
        who = a.dialogue_id or (f"request {a.request_id}" if a.request_id else "no id")
        message = f"rejected utterance ({who}): {a.problem}"
        if a.counter:  # a flood: one line a second, with the running count
            message += f" [{self.counters[a.counter]} {a.counter}]"
            self.get_logger().warning(message, throttle_duration_sec=1.0)
        else:
            self.get_logger().warning(message)

    def destroy_node(self) -> None:
        # A node whose __init__ failed (no map, bad parameter) is still destroyed by the
        # context's shutdown: it may have no speaker yet.
        speaker = getattr(self, "speaker", None)
        if speaker is not None:
            speaker.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """`ros2 run dlgpr_ros dialogue_manager_node`."""
    rclpy.init(args=args)
    spin_nodes([DialogueManagerNode()])


if __name__ == "__main__":
    main()
