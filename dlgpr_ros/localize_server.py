"""The `localize` action: a goal is one dialogue, its feedback the rounds, its result the place.

Robotics users drive speech and language components through actions (whisper_ros' listen,
llama_ros' generate): send a goal, watch feedback, get a result, cancel to stop. Here a goal
with a description starts a dialogue with it; an empty description claims the next dialogue
anyone starts (a spoken description, typically). The person answers on the usual topics, so
the topic interface and the action see the same dialogues. One feedback is published per
ranked round (its candidates with their belief and the question asked from them; the last
round has no question); the result is the localisation, or why there is none.

Execution model: the goal stays ACCEPTED while its dialogue runs and executes, at once, when
the dialogue ends. Both alternatives are worse in rclpy: a blocking execute callback holds an
executor thread per dialogue (two goals starve a two-thread node), and a pending coroutine
is resumed by the executor in a busy loop. Cancels are applied by a short timer once rclpy
has moved the goal to CANCELING, so the final transition is always a valid one.

All callbacks run in the dialogue manager's mutually exclusive callback group, so dialogue
state is touched by one callback at a time.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node

from dlgpr_core.dialogue.session import Finish, PublishState
from dlgpr_core.dialogue.sessions import PoolAction, Reject
from dlgpr_core.dialogue.state import AWAITING_ANSWER, RETRIEVING, Status
from dlgpr_core.dialogue.state import DialogueState as CoreState
from dlgpr_ros import conversions
from dlgpr_ros.action import Localize

RANKED_STOPS = frozenset({"confident", "max_rounds", "no_question"})
"""Stops decided right after a round was ranked: that round gets its (question-less) feedback."""

StartFn = Callable[[str, str], str | None]
"""start(description, request_id) -> dialogue id, or None when the description was refused."""
CancelFn = Callable[[str, str], None]
"""cancel(dialogue_id, detail)."""


@dataclass
class _Goal:
    handle: ServerGoalHandle[Any, Any, Any]
    request_id: str
    dialogue_id: str = ""
    result: Any = None
    cancel_sent: bool = False


class LocalizeServer:
    """The action server of one dialogue manager (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        start: StartFn,
        cancel: CancelFn,
        group: CallbackGroup,
        name: str = "localize",
        max_goals: int = 16,
    ) -> None:
        self.node = node
        self._start, self._cancel = start, cancel
        self.max_goals = max_goals
        self._ids = itertools.count(1)
        self._by_request: dict[str, _Goal] = {}
        self._by_dialogue: dict[str, _Goal] = {}
        self._listening: deque[_Goal] = deque()
        self._concluded: dict[bytes, _Goal] = {}
        """Goals whose dialogue ended, until their execute callback reports the result."""
        self._server = ActionServer(
            node,
            Localize,
            name,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=group,
        )
        node.create_timer(0.05, self._apply_cancels, callback_group=group)

    @property
    def live(self) -> int:
        return len(self._by_request) + len(self._by_dialogue) + len(self._listening)

    # -- goal lifecycle ---------------------------------------------------------------------

    def _on_goal(self, _request: Any) -> GoalResponse:
        if self.live >= self.max_goals:
            self.node.get_logger().warning(f"localize: {self.live} goals live; goal rejected")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle: ServerGoalHandle[Any, Any, Any]) -> None:
        goal = _Goal(handle, request_id=f"localize-{next(self._ids)}")
        description = str(handle.request.description)
        if not description.strip():
            self._listening.append(goal)
            return
        self._by_request[goal.request_id] = goal
        if self._start(description, goal.request_id) is None:  # refused: the result says why
            self._by_request.pop(goal.request_id, None)
            if goal.result is None:
                self._conclude(goal, None, Status.FAILED, "description refused")

    def _apply_cancels(self) -> None:
        """Cancels goals rclpy has moved to CANCELING (see the module docstring)."""
        for goal in list(self._listening):
            if goal.handle.is_cancel_requested:
                self._listening.remove(goal)
                self._conclude(goal, None, Status.CANCELLED, "cancelled before a description")
        for goal in list(self._by_dialogue.values()):
            if goal.handle.is_cancel_requested and not goal.cancel_sent:
                goal.cancel_sent = True
                self._cancel(goal.dialogue_id, "cancelled by the localize action client")

    def _execute(self, handle: ServerGoalHandle[Any, Any, Any]) -> Any:
        """Runs once the dialogue has ended: reports the stored result."""
        goal = self._concluded.pop(bytes(handle.goal_id.uuid), None)
        result = goal.result if goal is not None else Localize.Result(status=int(Status.FAILED))
        status = Status(result.status)
        if status == Status.CANCELLED and handle.is_cancel_requested:
            handle.canceled()
        elif status in (Status.CONFIDENT, Status.MAX_ROUNDS):
            handle.succeed()
        else:
            handle.abort()
        return result

    def _conclude(self, goal: _Goal, state: CoreState | None, status: Status, detail: str) -> None:
        stamp = self.node.get_clock().now().to_msg()
        result = Localize.Result(dialogue_id=goal.dialogue_id, status=int(status), detail=detail)
        result.localization.fix = conversions.navsatfix(None, None, stamp)
        if state is not None:
            msg = conversions.dialogue_state(state, stamp)
            result.history, result.questions = list(msg.history), list(msg.questions)
            if status in (Status.CONFIDENT, Status.MAX_ROUNDS):
                result.localization = conversions.localization(msg, stamp)
        goal.result = result
        self._concluded[bytes(goal.handle.goal_id.uuid)] = goal
        goal.handle.execute()

    # -- following the dialogues ---------------------------------------------------------------

    def observe(self, actions: Sequence[PoolAction]) -> None:
        """Binds new dialogues to their goals, publishes feedback, concludes finished goals."""
        for action in actions:
            if isinstance(action, PublishState):
                self._on_state(action.state)
            elif isinstance(action, Finish):
                self._on_finish(action.state)
            elif isinstance(action, Reject) and action.request_id in self._by_request:
                # a refused description: the result says why (too long, too many dialogues)
                goal = self._by_request.pop(action.request_id)
                self._conclude(goal, None, Status.FAILED, action.problem)

    def _on_state(self, state: CoreState) -> None:
        did = state.dialogue_id
        if did not in self._by_dialogue and state.round == 0 and state.phase == RETRIEVING:
            goal = self._by_request.pop(state.request_id, None)
            if goal is None and self._listening:
                goal = self._listening.popleft()
            if goal is not None:
                goal.dialogue_id = did
                self._by_dialogue[did] = goal
        goal = self._by_dialogue.get(did)
        if goal is not None and state.phase == AWAITING_ANSWER:
            self._feedback(goal, state)

    def _on_finish(self, state: CoreState) -> None:
        goal = self._by_dialogue.pop(state.dialogue_id, None)
        if goal is None:
            return
        if state.stop_reason in RANKED_STOPS:
            self._feedback(goal, state)
        self._conclude(goal, state, state.status, state.detail)

    def _feedback(self, goal: _Goal, state: CoreState) -> None:
        stamp = self.node.get_clock().now().to_msg()
        fb = Localize.Feedback(dialogue_id=state.dialogue_id, round=state.round)
        fb.question = conversions.question(
            state.pending_question,
            dialogue_id=state.dialogue_id,
            round_=state.round,
            questioner=state.asked_by,
            stamp=stamp,
        )
        fb.candidates = [
            conversions.candidate(h, b)
            for h, b in zip(state.candidates, state.belief, strict=False)
        ]
        goal.handle.publish_feedback(fb)
