"""QoS profiles of the dialogue topics, decided once for every node and the launch file.

Why these settings:
- RELIABLE: every message of a dialogue is a step of a protocol (a lost question or answer
  stalls the dialogue), unlike sensor streams where the next sample replaces a lost one.
- KEEP_LAST with a bounded depth: the dialogue manager serves up to `max_live_dialogues`
  (200) dialogues at once, so a burst of one message per live dialogue must fit the queue
  (256 for the request/response pairs, one in flight per dialogue; 1000 for the fan-in and
  fan-out topics every dialogue and every person shares, a few messages per dialogue), while
  a stuck subscriber still cannot make a publisher grow memory without limit. With depths of
  10 and 50, 100 descriptions sent at once lost half of them, and the requests they caused
  were answered only through re-sends (tests/test_ros_load.py).
- VOLATILE: a late-joining or restarted node must not replay answers, questions or
  requests of rounds that are already over (that would mix stale rounds into live
  dialogues). What a restarted node missed is re-sent by the dialogue manager's timeout
  instead, which knows what is still pending.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

REQUEST_DEPTH = 256
"""retrieval_request, candidates, question: one in flight per live dialogue."""
SHARED_DEPTH = 1000
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
