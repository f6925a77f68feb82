"""QoS profiles of the dialogue topics, decided once for every node and the launch file.

Why these settings:
- RELIABLE: every message of a dialogue is a step of a protocol (a lost question or answer
  stalls the dialogue), unlike sensor streams where the next sample replaces a lost one.
- KEEP_LAST with a bounded depth: the dialogue manager serves several dialogues at once, so
  a burst of one message per dialogue must fit the queue (50 for the fan-in/fan-out topics
  every dialogue shares, 10 for request/response pairs that are answered one at a time),
  while a stuck subscriber still cannot make a publisher grow memory without limit.
- VOLATILE: a late-joining or restarted node must not replay answers, questions or
  requests of rounds that are already over (that would mix stale rounds into live
  dialogues). What a restarted node missed is re-sent by the dialogue manager's timeout
  instead, which knows what is still pending.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

REQUEST_DEPTH = 10
"""retrieval_request, candidates, question: one in flight per dialogue, answered promptly."""
SHARED_DEPTH = 50
"""utterance, dialogue_state, localization: every dialogue and every person fans in here."""


def dialogue_qos(depth: int = REQUEST_DEPTH) -> QoSProfile:
    """Reliable, keep-last `depth`, volatile (see the module docstring)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


REQUEST_QOS = dialogue_qos(REQUEST_DEPTH)
SHARED_QOS = dialogue_qos(SHARED_DEPTH)

TOPIC_QOS: dict[str, QoSProfile] = {
    "utterance": SHARED_QOS,
    "typed_text": SHARED_QOS,
    "retrieval_request": REQUEST_QOS,
    "candidates": REQUEST_QOS,
    "dialogue_state": SHARED_QOS,
    "question": REQUEST_QOS,
    "localization": SHARED_QOS,
}
"""Topic (relative name) -> profile; nodes look their topics up here so that publisher and
subscriber always agree."""
