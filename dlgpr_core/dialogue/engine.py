"""The dialogue loop: retrieve, ask, append the answer, retrieve again (paper Sec. 4.1).

Only answers are appended to the query (d_t = concat(d0, a1..at)), as the reference
formulas state. Every round's state is exposed (candidates, belief, history), so a UI, a
ROS node or the benchmark can all drive the same engine; `run` is the simulated loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from dlgpr_core.dialogue.questioners import Questioner, softmax_belief
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.mapdb.report import PlaceHit

SearchFn = Callable[[str, int], list[PlaceHit]]
"""search(text, k) -> the top-k places, best first."""

Reranker = Callable[[Sequence[PlaceHit], Sequence[Question], Sequence[str]], list[PlaceHit]]
"""reranker(ranking, questions, answers) -> the ranking re-scored by what the answers say
(e.g. `consistency.FactConsistencyReranker`); None keeps the paper's text-only update."""

_ids = itertools.count()


class User(Protocol):
    """Anything that answers a question (the simulated `FactUser`, a person, an LLM)."""

    def answer(self, question: Question | str) -> str:
        """A short answer sentence."""
        ...


@dataclass(frozen=True)
class DialogueConfig:
    """Loop settings.

    `search_k` is how many places each retrieval returns: at least `top_k`; set it to the
    map's size to get whole-map ranks of a target (the benchmark does). `confidence` stops a
    dialogue early once the top-1 belief reaches it (None: always run `max_rounds`).
    """

    max_rounds: int = 5
    top_k: int = 10
    search_k: int = 10
    confidence: float | None = 0.9
    temperature: float = 0.05
    """Softmax temperature turning cosine scores into the belief (cosines differ by ~0.01-0.1
    between similar places, so a small temperature is needed to make the belief decisive)."""

    def __post_init__(self) -> None:
        if self.max_rounds < 0 or self.top_k < 1 or self.temperature <= 0:
            raise ValueError(f"invalid dialogue config {self}")
        if self.confidence is not None and not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1] or None, got {self.confidence}")


@dataclass(frozen=True)
class DialogueState:
    """Everything known after round `round` (0 = the initial description alone)."""

    dialogue_id: str
    round: int
    d0: str
    answers: tuple[str, ...]
    questions: tuple[Question, ...]
    ranking: tuple[PlaceHit, ...]
    """The full retrieval result of this round (`search_k` places)."""
    top_k: int
    belief: tuple[float, ...]
    """Softmax belief over `candidates`, same order."""
    pending_question: Question | None = None
    """The question to put to the user next; None when done."""
    done: bool = False
    stop_reason: str | None = None

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

    def rank_of(self, place_id: str) -> int:
        """0-indexed rank of `place_id` in this round's ranking; its length when absent
        (the pessimistic bound: ranked after everything that was returned)."""
        for i, hit in enumerate(self.ranking):
            if hit.place_id == place_id:
                return i
        return len(self.ranking)


@dataclass
class DialogueResult:
    """One finished dialogue: every round's state and, given a target, its ranks."""

    dialogue_id: str
    states: list[DialogueState]
    target_place_id: str | None = None
    ranks: list[int] = field(default_factory=list)
    """0-indexed rank of the target per round (rounds 0..len(states)-1)."""

    @property
    def final(self) -> DialogueState:
        """The last state."""
        return self.states[-1]

    def padded_ranks(self, n_rounds: int) -> list[int]:
        """Ranks for rounds 0..n_rounds-1; an early-stopped dialogue keeps its last rank,
        since its query no longer changes."""
        if not self.ranks:
            raise ValueError("this dialogue had no target, so it has no ranks")
        return (self.ranks + [self.ranks[-1]] * n_rounds)[:n_rounds]


class DialogueEngine:
    """Runs the loop over a `search` callable and a questioner."""

    def __init__(
        self,
        search: SearchFn,
        questioner: Questioner,
        config: DialogueConfig | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        self.search = search
        self.questioner = questioner
        self.config = config or DialogueConfig()
        self.reranker = reranker

    def _observe(
        self,
        dialogue_id: str,
        round_: int,
        d0: str,
        answers: tuple[str, ...],
        questions: tuple[Question, ...],
    ) -> DialogueState:
        cfg = self.config
        text = " ".join((d0, *answers))
        ranking = tuple(self.search(text, max(cfg.search_k, cfg.top_k)))
        if self.reranker is not None:
            ranking = tuple(self.reranker(ranking, questions, answers))
        return observe_ranking(cfg, dialogue_id, round_, d0, answers, questions, ranking)

    def _decide_many(self, states: Sequence[DialogueState]) -> list[DialogueState]:
        """Stop or attach the next question; undecided states are asked in ONE call when
        the questioner batches (`ask_many`, e.g. a VLM on a GPU)."""
        reasons = [stop_reason(self.config, s) for s in states]
        open_ = [s for s, r in zip(states, reasons, strict=True) if r is None]
        ask_many = getattr(self.questioner, "ask_many", None)
        if ask_many is not None and len(open_) > 1:
            asked = list(ask_many(open_))
        else:
            asked = [self.questioner.ask(s) for s in open_]
        questions = iter(asked)
        out = []
        for state, reason in zip(states, reasons, strict=True):
            if reason is None:
                question = next(questions)
                if question is None:
                    reason = "no_question"
                elif any(question.key == q.key for q in state.questions):
                    raise RuntimeError(f"questioner {self.questioner.name} repeated {question}")
                else:
                    out.append(replace(state, pending_question=question))
                    continue
            out.append(replace(state, done=True, stop_reason=reason))
        return out

    def start(self, d0: str, dialogue_id: str | None = None) -> DialogueState:
        """Round 0: retrieve with d0 alone; the state carries the first question."""
        return self.start_many([d0], [dialogue_id])[0]

    def start_many(
        self, d0s: Sequence[str], dialogue_ids: Sequence[str | None] | None = None
    ) -> list[DialogueState]:
        """Round 0 of several dialogues, their first questions asked in one batch."""
        ids = list(dialogue_ids) if dialogue_ids is not None else [None] * len(d0s)
        if len(ids) != len(d0s):
            raise ValueError(f"{len(d0s)} descriptions but {len(ids)} dialogue ids")
        return self._decide_many(
            [
                self._observe(did if did is not None else f"dlg-{next(_ids)}", 0, d0, (), ())
                for d0, did in zip(d0s, ids, strict=True)
            ]
        )

    def step(self, state: DialogueState, answer: str) -> DialogueState:
        """Record the answer to `state.pending_question`, re-retrieve, pick the next question."""
        return self.step_many([state], [answer])[0]

    def step_many(
        self, states: Sequence[DialogueState], answers: Sequence[str]
    ) -> list[DialogueState]:
        """`step` for several dialogues at once (lockstep), next questions asked in one batch."""
        if len(states) != len(answers):
            raise ValueError(f"{len(states)} dialogues but {len(answers)} answers")
        observed = []
        for state, answer in zip(states, answers, strict=True):
            if state.done or state.pending_question is None:
                raise ValueError(f"dialogue {state.dialogue_id} is finished ({state.stop_reason})")
            observed.append(
                self._observe(
                    state.dialogue_id,
                    state.round + 1,
                    state.d0,
                    (*state.answers, answer.strip()),
                    (*state.questions, state.pending_question),
                )
            )
        return self._decide_many(observed)

    def run(
        self,
        d0: str,
        user: User,
        target_place_id: str | None = None,
        dialogue_id: str | None = None,
    ) -> DialogueResult:
        """The whole simulated dialogue; with a target, its rank after every round."""
        state = self.start(d0, dialogue_id)
        states = [state]
        while not state.done and state.pending_question is not None:
            state = self.step(state, user.answer(state.pending_question))
            states.append(state)
        ranks = [s.rank_of(target_place_id) for s in states] if target_place_id else []
        return DialogueResult(state.dialogue_id, states, target_place_id, ranks)


def observe_ranking(
    config: DialogueConfig,
    dialogue_id: str,
    round_: int,
    d0: str,
    answers: tuple[str, ...],
    questions: tuple[Question, ...],
    ranking: tuple[PlaceHit, ...],
) -> DialogueState:
    """The undecided state of a round whose ranking was computed elsewhere.

    Step-wise API for distributed callers: a ROS dialogue manager gets the ranking from a
    retrieval node and the question from a questioner node, yet must compute the belief
    exactly as `DialogueEngine` does so that both paths stop at the same rounds.
    """
    scores = [h.score for h in ranking[: config.top_k]]
    return DialogueState(
        dialogue_id=dialogue_id,
        round=round_,
        d0=d0,
        answers=answers,
        questions=questions,
        ranking=ranking,
        top_k=config.top_k,
        belief=tuple(softmax_belief(scores, config.temperature)),
    )


def stop_reason(config: DialogueConfig, state: DialogueState) -> str | None:
    """Why a dialogue stops before a question is asked ("confident", "max_rounds",
    "no_candidates"), else None; same order of checks as `DialogueEngine` (the
    questioner's own "no_question" can only be known after asking it)."""
    if config.confidence is not None and state.belief and state.confidence >= config.confidence:
        return "confident"
    if state.round >= config.max_rounds:
        return "max_rounds"
    if not state.ranking:
        return "no_candidates"
    return None
