"""PlugIR questioner: candidate summary, redundancy filter, KL selection, fallback, wrapper.

The LLM is a scripted `ChatModel` that answers each PlugIR prompt from tables, and the
retriever is a hand-made search function whose score shifts are chosen per keyword, so the
question that must win the KL selection is known in advance. The end-to-end test uses the
tiny random-weight model (its outputs are noise: only the plumbing is tested there).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue import plugir
from dlgpr_core.dialogue.belief import softmax_belief
from dlgpr_core.dialogue.engine import DialogueEngine
from dlgpr_core.dialogue.plugir import PlugIRQuestioner, PlugIRSearch, kl_divergence, parse_question
from dlgpr_core.dialogue.questions import free_question
from dlgpr_core.dialogue.state import DialogueConfig, DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.llm.chat import TransformersChat
from dlgpr_core.llm.tiny import build_tiny_causal_lm
from dlgpr_core.mapdb.evidence import EvidenceItem, ImageEvidence
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_core.users.llm import LLMUser

N = 12


def _place(i: int) -> PlaceAnnotation:
    kind = "a red brick bank" if i % 2 == 0 else "a green glass cafe"
    return PlaceAnnotation(
        city="T",
        place_id=i,
        caption=f"caption {i}: a street with {kind}",
        description=f"A street with {kind}. The building is number {i}.",
    )


PLACES = {f"T:{i}": _place(i) for i in range(N)}


def _evidence(i: int) -> list[ImageEvidence]:
    """What an annotator might have seen at place i (PlugIR's view of the candidates)."""
    kind = "a red brick bank" if i % 2 == 0 else "a green glass cafe"
    items = [EvidenceItem(kind, 0.9), EvidenceItem(f"building number {i}", 0.5)]
    return [ImageEvidence(i, f"img{i}.jpg", items)]


EVIDENCE = EvidenceSource(
    lambda ids: {pid: _evidence(int(pid[2:])) for pid in ids if pid in PLACES}
)
SHIFT = {"red": 3.0, "blue": 1.0, "green": 0.05}
"""How far a keyword in the query moves the scores (the KL of a predicted answer)."""


class Search:
    """Scores fall with rank; a keyword adds SHIFT[word] * (place index) to reorder them."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, text: str, k: int) -> list[PlaceHit]:
        self.queries.append(text)
        words = set(re.findall(r"[a-z]+", text.lower()))
        shift = sum(v for w, v in SHIFT.items() if w in words)
        scores = {pid: 1.0 - 0.02 * i + shift * 0.02 * i for i, pid in enumerate(PLACES)}
        ranked = sorted(scores.items(), key=lambda x: -x[1])[:k]
        return [PlaceHit(r + 1, s, pid, 0, 0, "", 0, "T", "") for r, (pid, s) in enumerate(ranked)]


class PlugIRChat:
    """Answers PlugIR's four prompts from tables keyed by the question in the prompt."""

    def __init__(
        self,
        questions: list[list[str]],
        answerable: dict[str, str] | None = None,
        predicted: dict[str, str] | None = None,
        reformulated: str = "A red brick bank on a street.",
    ) -> None:
        self.questions = questions
        self.answerable = answerable or {}
        self.predicted = predicted or {}
        self.reformulated = reformulated
        self.calls: Counter[str] = Counter()

    def _reply(self, conv: list[dict[str, Any]], n: int) -> list[str]:
        system, user = conv[0]["content"], conv[-1]["content"]
        m = re.search(r"\[Question\] (.*)$", user)
        q = m.group(1) if m else ""
        if system == plugir.QUESTION_SYSTEM:
            self.calls["question"] += 1
            batch = self.questions.pop(0)
            assert len(batch) == n
            return batch
        if system == plugir.FILTER_SYSTEM:
            self.calls["filter"] += 1
            return [self.answerable.get(q, "Uncertain")]
        if system == plugir.PREDICT_SYSTEM:
            self.calls["predict"] += 1
            return [self.predicted[q]]
        if system == plugir.REFORMULATE_SYSTEM:
            self.calls["reformulate"] += 1
            return [self.reformulated]
        assert system == plugir.PARAPHRASE_SYSTEM
        self.calls["paraphrase"] += 1
        return ["Paraphrased: " + user]

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        max_new_tokens: int,
        temperature: float,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        return [self._reply(c, n) for c in conversations]


def _state(search: Search, questions: tuple[str, ...] = (), answers: tuple[str, ...] = ()):
    d0 = "A street with a bank."
    ranking = tuple(search(" ".join((d0, *answers)), N))
    return DialogueState(
        dialogue_id="d",
        round=len(answers),
        d0=d0,
        answers=answers,
        questions=tuple(free_question(q) for q in questions),
        ranking=ranking,
        top_k=5,
        belief=tuple(softmax_belief([h.score for h in ranking[:5]], 0.05)),
    )


def _questioner(chat: PlugIRChat, search: Search, **kw: Any) -> PlugIRQuestioner:
    kw = {"n_questions": 5, "n_clusters": 2, "pool_size": N, **kw}
    return PlugIRQuestioner(chat, search, EVIDENCE, **kw)


def test_filter_drops_answerable_and_kl_picks_smallest_shift() -> None:
    search = Search()
    chat = PlugIRChat(
        questions=[
            [
                "1. Is the bank red?",
                "Question: Is there a bench?",
                "What colour is the cafe?",
                "Sure! Is there a tree here?",
                "I cannot ask anything.",
            ]
        ],
        answerable={"Is there a bench?": "Yes, there is a bench."},
        predicted={
            "Is the bank red?": "The bank is red.",
            "What colour is the cafe?": "The cafe is green.",
            "Is there a tree here?": "There is a blue tree.",
        },
    )
    q = _questioner(chat, search)
    state = _state(search)
    question = q.ask(state)
    assert question is not None and question.kind == "free" and not question.fallback
    assert question.text == "What colour is the cafe?"
    assert "KL=" in question.reasoning
    assert q.stats["redundant"] == 1 and q.stats["unparsed"] == 1
    assert chat.calls["filter"] == 4 and chat.calls["predict"] == 3
    # Each surviving question was scored by retrieving with its predicted answer appended.
    assert {f"{state.query} The bank is red.", f"{state.query} The cafe is green."} <= set(
        search.queries
    )


def test_kl_ranks_the_constructed_shifts() -> None:
    search = Search()
    q = _questioner(PlugIRChat([]), search)
    state = _state(search)
    chat = PlugIRChat(
        [],
        predicted={"A?": "red", "B?": "blue", "C?": "green"},
    )
    q.chat = chat
    best, scored = q.select(state, [], ["A?", "B?", "C?"])
    kls = {s[0]: s[2] for s in scored}
    assert best == "C?" and kls["C?"] < kls["B?"] < kls["A?"]


def test_fallback_when_everything_is_filtered_and_no_repeats() -> None:
    search = Search()
    always = {"Is the bank red?": "Yes.", "Is there a bench?": "No."}
    chat = PlugIRChat(
        questions=[["Is the bank red?", "Is there a bench?"], ["Is there a bench?", "nothing"]],
        answerable=always,
    )
    q = _questioner(chat, search, n_questions=2)
    first = q.ask(_state(search))
    assert first is not None and first.fallback
    assert q.stats["fallback"] == 1 and q.stats["regenerated"] == 1
    assert q.stats["redundant"] == 3 and q.stats["unparsed"] == 1
    # With the fallback already asked, the next fallback is a different question.
    chat.questions = [["Is there a bench?", "Is the bank red?"]] * 2
    state = _state(search, questions=(first.text,), answers=("I don't know.",))
    second = q.ask(state)
    assert second is not None and second.fallback and second.key != first.key


def test_already_asked_question_is_never_repeated() -> None:
    search = Search()
    chat = PlugIRChat(
        questions=[["Is the bank red?", "1. is the bank  red?", "Is there a blue tree?"]],
        predicted={"Is the bank red?": "x", "Is there a blue tree?": "There is a blue tree."},
    )
    q = _questioner(chat, search, n_questions=3)
    state = _state(search, questions=("Is the bank red?",), answers=("Yes.",))
    question = q.ask(state)
    assert question is not None and question.text == "Is there a blue tree?"
    assert q.stats["repeated"] == 2


def test_summary_keeps_best_ranked_caption_per_cluster() -> None:
    search = Search()
    q = _questioner(PlugIRChat([]), search)
    hits = search("bank", N)
    summary = q.summarize(hits)
    best: dict[str, str] = {}
    for h in hits:
        best.setdefault(PLACES[h.place_id].description.split(".")[0], h.place_id)
    assert summary == [
        "; ".join(p.phrase for p in _evidence(int(pid[2:]))[0].items)
        for pid in sorted(best.values(), key=lambda p: [h.place_id for h in hits].index(p))
    ]
    # An embedding callable replaces TF-IDF; one cluster per candidate when k >= n.
    calls: list[int] = []

    def embed(texts: Any) -> Any:
        calls.append(len(texts))
        return [[1.0, 0.0] if "bank" in t else [0.0, 1.0] for t in texts]

    q2 = _questioner(PlugIRChat([]), search, embed=embed)
    assert q2.summarize(hits) == summary and calls == [N]
    q2.summarize(hits)
    assert calls == [N]  # embeddings are cached per place
    assert len(_questioner(PlugIRChat([]), search, n_clusters=20).summarize(hits)) == N


def test_parse_question() -> None:
    assert parse_question("<think>hmm?</think>\n2) **Is there a fountain?** Thanks") == (
        "Is there a fountain?"
    )
    assert parse_question("no question here") is None
    assert parse_question("Ok?") is None  # too short to be a question about the place


def test_kl_divergence() -> None:
    assert kl_divergence([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(0.6931, abs=1e-4)


def test_reformulation_and_search_wrapper() -> None:
    search = Search()
    chat = PlugIRChat(
        questions=[["Is the bank red?"]],
        predicted={"Is the bank red?": "The bank is red."},
        reformulated="A street with a red bank.",
    )
    q = _questioner(chat, search, n_questions=1)
    wrapped = PlugIRSearch(search, q)
    engine = DialogueEngine(wrapped, q, DialogueConfig(max_rounds=1, confidence=None))
    state = engine.start("A street with a bank.")
    assert wrapped.queries == ["A street with a bank."]  # round 0: no dialogue yet
    engine.step(state, "Yes, the bank is red.")
    assert wrapped.queries[-1] == "A street with a red bank."
    # The reformulation saw the question and the answer.
    assert q.dialogue_for("A street with a bank. Yes, the bank is red.") == (
        "A street with a bank.",
        [("Is the bank red?", "Yes, the bank is red.")],
    )
    # An unchanged reformulation is paraphrased; a question-like one falls back to d0 + answers.
    turns = [("Is the bank red?", "Yes.")]
    assert q.reformulate_dialogue("d0.", turns) == "A street with a red bank."
    assert q.reformulate_dialogue("d0.", turns).startswith("Paraphrased: ")
    chat.reformulated = "Is it red?"
    assert q.reformulate_dialogue("d0.", turns) == "d0. Yes."


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> TransformersChat:
    path: Path = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "causal")
    return TransformersChat(path, device="cpu")


def test_end_to_end_with_tiny_model(tiny_chat: TransformersChat) -> None:
    search = Search()
    q = PlugIRQuestioner(
        tiny_chat, search, EVIDENCE, n_questions=2, n_clusters=3, pool_size=N, max_new_tokens=8
    )
    user = LLMUser(PLACES["T:3"], tiny_chat, max_new_tokens=8)
    engine = DialogueEngine(search, q, DialogueConfig(max_rounds=3, confidence=None, search_k=N))
    result = engine.run("A street with a cafe.", user, target_place_id="T:3")
    assert len(result.states) == 4 and result.final.stop_reason == "max_rounds"
    asked = [s.questions for s in result.states][-1]
    assert len({x.key for x in asked}) == 3 and all(x.kind == "free" for x in asked)
    assert q.stats["asked"] == 3 and q.stats["generated"] >= 6
    assert user.stats["questions"] == 3
