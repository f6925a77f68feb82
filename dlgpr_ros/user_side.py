"""The user's side of the dialogue protocol, shared by the typing person and the simulated one.

A user starts a dialogue with a description (an utterance with no dialogue id and a
`request_id` of its own), learns the dialogue id from the first DialogueState that echoes
that request id, and answers whenever a state of its dialogue is awaiting an answer, from the
state's `pending_question` (text and structured probe). It follows the dialogue manager
alone: no other topic, no text matching.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from dlgpr_ros import conversions
from dlgpr_ros.msg import DialogueState, Utterance
from dlgpr_ros.qos import TOPIC_QOS


class UserSide(Node):
    """Claims dialogue ids by request id and keeps each owned dialogue's states."""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._requests = itertools.count(1)
        self._pending: dict[str, str] = {}
        """request id -> owner key, until the manager's first state names the dialogue."""
        self._pending_any: str | None = None
        """Owner of the next dialogue someone else starts (a spoken description, whose text
        is only known once Whisper has heard it)."""
        self.owner_of: dict[str, str] = {}
        """Dialogue id -> owner key."""
        self.states: dict[str, list[DialogueState]] = {}
        """Dialogue id -> every state received, in order."""
        self._answered: set[tuple[str, int]] = set()
        self.refusals: dict[str, str] = {}
        """Request id -> why the manager refused that description (no dialogue started)."""
        self.counters: Counter[str] = Counter()
        self._pub = self.create_publisher(Utterance, "utterance", TOPIC_QOS["utterance"])
        self.create_subscription(
            DialogueState,
            "dialogue_state",
            self._on_state,
            TOPIC_QOS["dialogue_state"],
            callback_group=MutuallyExclusiveCallbackGroup(),
        )

    def say(self, text: str, dialogue_id: str = "", round_: int = 0, request_id: str = "") -> None:
        self._pub.publish(
            conversions.utterance(
                text,
                dialogue_id=dialogue_id,
                round_=round_,
                request_id=request_id,
                stamp=self.get_clock().now().to_msg(),
            )
        )

    def start_dialogue(self, owner: str, text: str) -> str:
        """Describes a place to start a dialogue for `owner`; returns the request id."""
        request_id = f"{self.get_name()}-{next(self._requests)}"
        with self._lock:
            self._pending[request_id] = owner
        self.say(text, request_id=request_id)
        return request_id

    def _claim(self, msg: DialogueState) -> str | None:
        """The owner of `msg`'s dialogue, claiming it when it is ours (lock held)."""
        owner = self.owner_of.get(msg.dialogue_id)
        if owner is not None:
            return owner
        owner = self._pending.pop(msg.request_id, None) if msg.request_id else None
        if owner is None and self._pending_any is not None and msg.round == 0:
            owner, self._pending_any = self._pending_any, None
        if owner is not None:
            self.owner_of[msg.dialogue_id] = owner
        return owner

    def _on_state(self, msg: DialogueState) -> None:
        if not msg.dialogue_id:  # a refused description: no dialogue to own
            with self._lock:
                owner = self._pending.pop(msg.request_id, None) if msg.request_id else None
                if owner is not None:
                    self.refusals[msg.request_id] = msg.detail
                    self.counters["refused"] += 1
            if owner is not None:
                self._on_refused(owner, msg)
            return
        with self._lock:
            owner = self._claim(msg)
            if owner is None:
                self._on_foreign_state(msg)
                return
            self.states.setdefault(msg.dialogue_id, []).append(msg)
            key = (msg.dialogue_id, int(msg.round))
            due = (
                msg.phase == DialogueState.PHASE_AWAITING_ANSWER
                and bool(msg.pending_question.text)
                and key not in self._answered
            )
            if due:
                self._answered.add(key)
        if due:
            self._on_question(owner, msg)
        if msg.done:
            self._on_finished(owner, msg)

    def forget(self, dialogue_id: str, last_round: int) -> None:
        """Drops what is kept about a finished dialogue (a user of thousands of dialogues
        keeps only their outcomes); later states of it count as foreign."""
        with self._lock:
            self.owner_of.pop(dialogue_id, None)
            self.states.pop(dialogue_id, None)
            for r in range(last_round + 1):
                self._answered.discard((dialogue_id, r))

    def _on_finished(self, owner: str, msg: DialogueState) -> None:
        """`owner`'s dialogue ended (`msg.status`, `msg.detail`); nothing by default."""

    def _on_refused(self, owner: str, msg: DialogueState) -> None:
        """The manager refused `owner`'s description (`msg.detail` says why)."""
        self.get_logger().warning(f"description refused: {msg.detail}")

    def _on_foreign_state(self, msg: DialogueState) -> None:
        """A state of a dialogue this user does not own (lock held); ignored by default."""

    def _on_question(self, owner: str, state: DialogueState) -> None:
        """`state.pending_question` of an owned dialogue awaits an answer."""
        raise NotImplementedError
