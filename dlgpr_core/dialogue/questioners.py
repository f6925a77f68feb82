"""Questioners that need no LLM: expected-information-gain and a random-fact baseline.

Both only look at the dialogue state (current candidates, their belief, questions already
asked) and at the candidates' annotations, so they run in milliseconds on a CPU and give
the LLM questioner two reference points: a strong heuristic and chance.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.consistency import settled
from dlgpr_core.dialogue.knowledge import KnowledgeIndex, Outcome, PlaceKnowledge
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question

if TYPE_CHECKING:
    from dlgpr_core.dialogue.engine import DialogueState


class Questioner(Protocol):
    """Picks the next question from the dialogue state; None when it has nothing to ask."""

    name: str

    def ask(self, state: DialogueState) -> Question | None:
        """The next question (never one whose probe was already asked)."""
        ...


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


def _entropy(probs: Sequence[float]) -> float:
    total = sum(probs)
    if total <= 0:
        return 0.0
    return -sum(p / total * math.log(p / total) for p in probs if p > 0)


def candidate_questions(knowledge: Sequence[PlaceKnowledge]) -> list[Question]:
    """Presence, yes/no attribute and open attribute probes from the candidates' facts."""
    out: dict[tuple[str, str, str | None, str | None], Question] = {}
    for k in knowledge:
        for cat in k.categories:
            if cat != "street":
                q = presence_question(cat)
                out.setdefault(q.key, q)
        for (cat, attr), values in k.values.items():
            q = attribute_question(cat, attr)
            out.setdefault(q.key, q)
            for v in values:
                q = attribute_question(cat, attr, v)
                out.setdefault(q.key, q)
    return [out[key] for key in sorted(out, key=lambda x: tuple(str(p) for p in x))]


class InfoGainQuestioner:
    """Asks the question whose truthful answer most reduces the belief's expected entropy.

    Belief: softmax(score / temperature) over the top-k candidates (the engine's belief
    when `temperature` is None). Each candidate's answer to a probe is predicted exactly as
    the simulated user would give it (yes / no+value / absent / unknown / value), so the
    expected posterior entropy sum_a P(a) H(belief | a) is exact under that user model.
    """

    name = "info-gain"

    def __init__(
        self,
        places_by_id: Mapping[str, PlaceAnnotation],
        top_k: int = 10,
        temperature: float | None = None,
        open_questions: bool = True,
    ) -> None:
        self.top_k = top_k
        self.temperature = temperature
        self.open_questions = open_questions
        self._knowledge = KnowledgeIndex(places_by_id)

    def _belief(self, state: DialogueState) -> tuple[list[str], list[float]]:
        hits = state.candidates[: self.top_k]
        ids = [h.place_id for h in hits]
        if self.temperature is None and len(state.belief) >= len(ids):
            return ids, list(state.belief[: len(ids)])
        return ids, softmax_belief([h.score for h in hits], self.temperature or 0.05)

    def expected_entropy(
        self,
        question: Question,
        knowledge: Sequence[PlaceKnowledge | None],
        belief: Sequence[float],
    ) -> float:
        """sum over answers a of P(a) * H(belief restricted to candidates answering a)."""
        groups: dict[Outcome, list[float]] = defaultdict(list)
        for k, b in zip(knowledge, belief, strict=True):
            groups[k.outcome(question) if k is not None else ("unknown",)].append(b)
        total = sum(belief)
        return sum(sum(g) / total * _entropy(g) for g in groups.values())

    def ask(self, state: DialogueState) -> Question | None:
        """The minimum-expected-entropy probe not asked yet and not already settled by an
        answer (ties: fixed probe order)."""
        ids, belief = self._belief(state)
        knowledge = [self._knowledge.get(pid) for pid in ids]
        asked = {q.key for q in state.questions}
        done = settled(state.questions, state.answers)
        pool = candidate_questions([k for k in knowledge if k is not None])
        best: tuple[float, Question] | None = None
        for q in pool:
            if q.key in asked or (q.is_open and not self.open_questions):
                continue
            if (q.category, None) in done or (q.category, q.attribute) in done:
                continue  # the user already said it is absent / what it looks like
            h = self.expected_entropy(q, knowledge, belief)
            if best is None or h < best[0] - 1e-12:
                best = (h, q)
        return None if best is None else best[1]


class RandomFactQuestioner:
    """Baseline: a random fact of a random top-k candidate, as a yes/no probe, never repeated."""

    name = "random"

    def __init__(
        self, places_by_id: Mapping[str, PlaceAnnotation], seed: int = 0, top_k: int = 10
    ) -> None:
        self.places = places_by_id
        self.top_k = top_k
        self.rng = random.Random(seed)

    def ask(self, state: DialogueState) -> Question | None:
        """Shuffles the candidates, then their facts, and returns the first new probe."""
        asked = {q.key for q in state.questions}
        ids = [h.place_id for h in state.candidates[: self.top_k]]
        self.rng.shuffle(ids)
        for pid in ids:
            place = self.places.get(pid)
            if place is None:
                continue
            category_of = {e.id: e.category for e in place.elements}
            facts = list(place.facts)
            self.rng.shuffle(facts)
            for f in facts:
                cat = category_of.get(f.element_id)
                if cat is None:
                    continue
                if f.attribute == "category":
                    q = presence_question(cat)
                else:
                    q = attribute_question(cat, f.attribute, f.value)
                if q.key not in asked:
                    return q
        return None


def _vlm_questioner(
    places_by_id: Mapping[str, PlaceAnnotation] | None = None,
    model: str | None = None,
    adapter: str | None = None,
    **options: Any,
) -> Questioner:
    """DQ-pilot (with a LoRA adapter) or its zero-shot baseline (without); the model loads
    here, once, so callers share one questioner between dialogues."""
    from dlgpr_core.dialogue.dq_pilot import DQPilotConfig, DQPilotQuestioner

    fields: dict[str, Any] = dict(options, adapter=adapter)
    if model:
        fields["model"] = model
    cfg = DQPilotConfig(**fields)
    return DQPilotQuestioner(cfg, places_by_id=places_by_id)


def _zero_shot(**kwargs: Any) -> Questioner:
    if kwargs.get("adapter"):
        raise ValueError("vlm-zero-shot runs the VLM without an adapter; use dq-pilot for one")
    return _vlm_questioner(**kwargs)


def _plugir(
    places_by_id: Mapping[str, PlaceAnnotation],
    search: Callable[[str, int], Any],
    llm: str | None = None,
    **options: Any,
) -> Questioner:
    """The PlugIR baseline over a chat model given by spec (path, hub id, openai:...)."""
    from dlgpr_core.dialogue.plugir import PlugIRQuestioner
    from dlgpr_core.llm.chat import create_chat_model

    if not llm:
        raise ValueError("plugir needs a chat model: pass llm=<path, hub id or openai:...>")
    return PlugIRQuestioner(create_chat_model(llm), search, places_by_id, **options)


QUESTIONERS: dict[str, Callable[..., Questioner]] = {
    "info-gain": InfoGainQuestioner,
    "random": RandomFactQuestioner,
    "dq-pilot": _vlm_questioner,
    "vlm-zero-shot": _zero_shot,
    "plugir": _plugir,
}


def make_questioner(name: str, **kwargs: Any) -> Questioner:
    """Build a registered questioner by name (see `QUESTIONERS`)."""
    try:
        factory = QUESTIONERS[name]
    except KeyError:
        raise ValueError(f"unknown questioner {name!r}; known: {sorted(QUESTIONERS)}") from None
    return factory(**kwargs)
