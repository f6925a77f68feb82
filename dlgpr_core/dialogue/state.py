"""What a dialogue is at one moment: its settings and an immutable snapshot of its state.

The snapshot is the one currency of the dialogue: the session (`session.py`) produces it,
questioners read it, the engine returns it, and the ROS layer converts it to and from a
`DialogueState` message. Everything a receiver needs is in it (candidates with their
belief, the questions with their structured probes, the question awaiting an answer), so
no receiver recomputes or re-parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from dlgpr_core.dialogue.questions import Question
from dlgpr_core.mapdb.report import PlaceHit

Phase = Literal["retrieving", "awaiting question", "awaiting answer", "done"]
"""Where a dialogue stands: waiting for a ranking, for the questioner, for the person, or
finished. The strings are what a person reads in a log or a `DialogueState.detail`."""

RETRIEVING: Phase = "retrieving"
AWAITING_QUESTION: Phase = "awaiting question"
AWAITING_ANSWER: Phase = "awaiting answer"
DONE: Phase = "done"
PHASES: tuple[Phase, ...] = (RETRIEVING, AWAITING_QUESTION, AWAITING_ANSWER, DONE)

DEFAULT_TEMPERATURE = 0.2
"""Chosen on the validation city Valburg (100 dialogues, learned evidence, caption first):
R@1 at round 5 was 33% at 0.05 (the old value: a caption's cosines made the belief sure of
the wrong places), 42% at 0.1, 48% at 0.2 and 47% at 0.4."""

StopReason = Literal[
    "confident",
    "max_rounds",
    "no_question",
    "no_candidates",
    "repeated",
    "timeout",
    "no_answer",
    "rejected_answer",
    "cancelled",
]


class Status(IntEnum):
    """How a dialogue ended (ACTIVE while it has not); the values are `DialogueState.msg`'s."""

    ACTIVE = 0
    CONFIDENT = 1
    MAX_ROUNDS = 2
    FAILED = 3
    CANCELLED = 4


STATUS_OF_REASON: dict[str, Status] = {
    "confident": Status.CONFIDENT,
    "max_rounds": Status.MAX_ROUNDS,
    # the questioner ran out of questions: a normal end, like the round limit
    "no_question": Status.MAX_ROUNDS,
    "no_candidates": Status.FAILED,
    "repeated": Status.FAILED,
    "timeout": Status.FAILED,
    # the person never answered (walked away): the dialogue cannot localise anything
    "no_answer": Status.FAILED,
    "rejected_answer": Status.FAILED,
    "cancelled": Status.CANCELLED,
}


@dataclass(frozen=True)
class DialogueConfig:
    """Loop settings, one set for the engine and the ROS graph.

    `search_k` is how many places each retrieval returns: at least `top_k`; set it to the
    map's size to get whole-map ranks of a target (the benchmark does). `confidence` stops a
    dialogue early once the top-1 belief reaches it (None: always run `max_rounds`).
    `request_timeout` is how long a session waits for a ranking or a question before it
    re-sends the request (None: never, as for the synchronous engine); after `max_resends`
    re-sends the dialogue fails naming the silent peer. `answer_timeout` is how long a
    question waits for the person's answer before the dialogue fails with "no_answer"
    (None: for ever, as for the engine's simulated users); without it a robot that heard
    descriptions and never the answers would keep every such dialogue alive for ever.
    """

    max_rounds: int = 5
    top_k: int = 50
    """Candidates the belief covers (and the questioner plans over); chosen on the validation
    city Valburg: 50 asks as well as the whole 300-place map (R@1 at round 5: 49% vs 48%)."""
    search_k: int = 10
    confidence: float | None = 0.9
    temperature: float = DEFAULT_TEMPERATURE
    """Softmax temperature turning scores into the belief: belief = softmax(score / T), and
    the answer update adds T x ln P(answers | place) to each score, so T weighs the
    retriever's cosine against what the answers say. The only temperature of a dialogue:
    the belief travels in every state, so no receiver recomputes it."""
    request_timeout: float | None = None
    max_resends: int = 3
    answer_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_rounds < 0 or self.top_k < 1 or self.temperature <= 0:
            raise ValueError(f"invalid dialogue config {self}")
        if self.confidence is not None and not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1] or None, got {self.confidence}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 or None, got {self.request_timeout}")
        if self.answer_timeout is not None and self.answer_timeout <= 0:
            raise ValueError(f"answer_timeout must be > 0 or None, got {self.answer_timeout}")
        if self.max_resends < 0:
            raise ValueError(f"max_resends must be >= 0, got {self.max_resends}")

    @property
    def k(self) -> int:
        """Places requested per retrieval."""
        return max(self.search_k, self.top_k)


@dataclass(frozen=True)
class DialogueState:
    """Everything known after round `round` (0 = the initial description alone)."""

    dialogue_id: str
    round: int
    d0: str
    answers: tuple[str, ...]
    questions: tuple[Question, ...]
    """The answered questions: questions[i] was answered by answers[i]."""
    ranking: tuple[PlaceHit, ...]
    """The full retrieval result of this round (`search_k` places), after the answer update."""
    top_k: int
    belief: tuple[float, ...]
    """Softmax belief over `candidates`, same order."""
    pending_question: Question | None = None
    """The question put to the user and not answered yet (not in `questions`); None
    otherwise."""
    done: bool = False
    stop_reason: str | None = None
    phase: Phase = AWAITING_QUESTION
    detail: str = ""
    """Human-readable: the phase while active, why it stopped once done."""
    asked_by: str = ""
    """The questioner that asked `pending_question` (or the last question)."""
    request_id: str = ""
    """Chosen by whoever started the dialogue (an utterance's `request_id`), so a user can
    recognise the dialogue its description opened without matching texts."""

    @property
    def candidates(self) -> tuple[PlaceHit, ...]:
        """The top-k places the questioner reasons about."""
        return self.ranking[: self.top_k]

    @property
    def query(self) -> str:
        """Retrieval text of this round: d0 followed by the answers, nothing else."""
        return " ".join((self.d0, *self.answers))

    @property
    def confidence(self) -> float:
        """Belief of the top-1 candidate (0 when nothing was retrieved)."""
        return self.belief[0] if self.belief else 0.0

    @property
    def status(self) -> Status:
        """ACTIVE until done, then what the stop reason means."""
        if not self.done:
            return Status.ACTIVE
        return STATUS_OF_REASON.get(self.stop_reason or "", Status.FAILED)

    @property
    def history(self) -> tuple[str, ...]:
        """d0 and the answers, in order (what a person said)."""
        return (self.d0, *self.answers)

    def rank_of(self, place_id: str) -> int:
        """0-indexed rank of `place_id` in this round's ranking; its length when absent
        (the pessimistic bound: ranked after everything that was returned)."""
        for i, hit in enumerate(self.ranking):
            if hit.place_id == place_id:
                return i
        return len(self.ranking)
