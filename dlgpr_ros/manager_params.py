"""The dialogue manager's parameters: declared with types and descriptions, read once.

Kept apart from the node (as open_clip_train keeps its params) so the node is only the
message plumbing, and `config/dialogue.yaml`, the launch file and `dlgpr bringup` all see one
table of names, defaults and meanings.
"""

from __future__ import annotations

import uuid
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from dlgpr_core.dialogue.sessions import PoolLimits
from dlgpr_core.dialogue.state import DialogueConfig

PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("max_rounds", 5, "Questions at most per dialogue."),
    ("confidence", 0.9, "Top-1 belief that stops a dialogue early (0: never)."),
    ("top_k", 50, "Candidates kept in the belief (and planned over by the questioner)."),
    ("search_k", 200, "Places requested per round (the answers re-rank them)."),
    ("temperature", 0.2, "Softmax temperature of the belief (the dialogue's only one)."),
    ("request_timeout", 5.0, "Seconds to wait for candidates or a question before re-sending."),
    ("max_resends", 3, "Re-sends per step before the dialogue fails."),
    (
        "answer_timeout",
        120.0,
        "Seconds a question waits for the person's answer before the dialogue fails "
        "(stop reason no_answer); 0: for ever.",
    ),
    ("max_utterance_bytes", 10_000, "Longer utterances are rejected."),
    ("max_finished", 1000, "Finished dialogues remembered (late answers)."),
    (
        "max_live_dialogues",
        200,
        "Dialogues running at once; a new description beyond them is refused (a FAILED "
        "state for its request_id, a logged and counted rejection).",
    ),
    (
        "max_requests_in_flight",
        8,
        "Requests sent and not answered at once, per peer (retrieval node, questioner); more "
        "wait in the manager, their request_timeout not running (busy is not silent).",
    ),
    ("max_goals", 16, "Localize goals live at once; more are rejected."),
    ("speak", False, "Speak questions with espeak-ng."),
    ("voice", "en", "espeak-ng voice."),
    (
        "update",
        "evidence",
        "Belief update: 'text' (the paper: answers only extend the query) or 'evidence' "
        "(also re-score each place by the answer's likelihood under its image evidence).",
    ),
    ("map_path", "", "Map (its image evidence, for update=evidence)."),
    ("evidence", "learned", "Annotator whose map evidence the update reads."),
    ("id_prefix", "", "Dialogue id prefix; empty: random (set it to replay a bag's answers)."),
)


def declare(node: Node) -> dict[str, Any]:
    """Declares every parameter on `node`; returns their values (overrides applied)."""
    for name, default, description in PARAMETERS:
        node.declare_parameter(name, default, ParameterDescriptor(description=description))
    return {name: node.get_parameter(name).value for name, _, _ in PARAMETERS}


def dialogue_config(p: dict[str, Any]) -> DialogueConfig:
    return DialogueConfig(
        max_rounds=int(p["max_rounds"]),
        top_k=int(p["top_k"]),
        search_k=int(p["search_k"]),
        confidence=float(p["confidence"]) or None,
        temperature=float(p["temperature"]),
        request_timeout=float(p["request_timeout"]),
        max_resends=int(p["max_resends"]),
        answer_timeout=float(p["answer_timeout"]) or None,
    )


def pool_limits(p: dict[str, Any]) -> PoolLimits:
    return PoolLimits(
        max_utterance_bytes=int(p["max_utterance_bytes"]),
        max_finished=int(p["max_finished"]),
        max_live=int(p["max_live_dialogues"]),
        max_in_flight=int(p["max_requests_in_flight"]),
    )


def id_prefix(p: dict[str, Any]) -> str:
    """Unique across restarts and across several managers on one DDS domain, unless fixed."""
    return str(p["id_prefix"]) or uuid.uuid4().hex[:6]
