"""The belief over candidate places: one definition for every part of the dialogue.

A retriever's cosine scores are not probabilities; the dialogue reads them as one,
softmax(score / temperature), to decide when it is confident and which question splits the
candidates best. It is computed once per round by the session and travels with the state
(`DialogueState.belief`, the ROS `CandidatePlace.belief`), so questioners, printers and
action clients all see the same numbers from the same temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def softmax_belief(scores: Sequence[float], temperature: float) -> list[float]:
    """softmax(scores / temperature), the retrieval scores read as a belief over places."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def entropy(probs: Sequence[float]) -> float:
    """Shannon entropy (nats) of `probs` renormalised to sum to one; 0 for an empty or
    all-zero list."""
    total = sum(probs)
    if total <= 0:
        return 0.0
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)
