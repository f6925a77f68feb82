"""PlugIR (Lee et al. 2024) as a questioner: the interactive-retrieval baseline of Table 2.

Outline (reference formulas-and-formats.md, "PlugIR, the interactive baseline"):
1. candidate summary: the top-N retrieved places (N shrinks each round) are clustered with
   k-means and the best-ranked place of each cluster contributes its caption, so the LLM
   sees what the retriever is torn between without reading N descriptions;
2. question generation: the LLM samples several questions about common objects that would
   narrow the candidates down;
3. redundancy filter: the LLM tries to answer each question from the description and the
   dialogue so far; a question it can answer adds nothing and is dropped (PlugIR
   regenerates instead; here the pool is regenerated once when every sample fails);
4. selection: for each surviving question the LLM predicts the answer, the query is
   extended with it and re-retrieved, and the question whose predicted answer changes the
   candidate distribution least (smallest KL over ranks ``kl_start``..N) is asked, which is
   PlugIR's way of preferring questions consistent with what the retriever already believes.

Context reformulation (the LLM rewrites the dialogue into one caption-style query) is
`PlugIRQuestioner.reformulate`; `PlugIRSearch` wraps a retriever with it so that the engine,
which retrieves with d0 + answers, can run the full PlugIR loop. Without the wrapper the
questioner still works and the engine keeps the paper's d_t = concat(d0, a_1..a_t).

The candidates are seen through the map's image evidence (the annotators' phrases), the
robot's counterpart of PlugIR captioning each candidate image with BLIP.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dlgpr_core.dialogue.belief import softmax_belief
from dlgpr_core.dialogue.questions import Question, free_question
from dlgpr_core.dialogue.state import DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.evidence.slots import categories
from dlgpr_core.llm.chat import ChatModel
from dlgpr_core.mapdb.report import PlaceHit

if TYPE_CHECKING:
    # Type-only: the questioner registry imports questioners, and the engine imports it.
    from dlgpr_core.dialogue.engine import SearchFn

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], Any]
"""Texts -> an (n, d) array of embeddings (e.g. a retriever's ``encode_text``)."""

QUESTION_SYSTEM = (
    "You help a person find a specific street place in a map by asking them questions. "
    "You see their description of the place, the dialogue so far, and captions of the "
    "places the retrieval system currently finds most likely ([Retrieval Candidates]). Ask "
    "ONE short question about common objects or their attributes (buildings, colours, "
    "materials, street furniture, trees, signs) that helps tell the candidates apart and "
    "that cannot be answered from the description or the dialogue so far. Do not repeat a "
    "question. Reply with the question only."
)
FILTER_SYSTEM = (
    "You check whether a question is already answered. Using ONLY the description and the "
    "dialogue below, answer the question briefly. If they do not answer it, reply exactly: "
    "Uncertain"
)
PREDICT_SYSTEM = (
    "You guess how a person will answer a question about the place they are looking for. "
    "Use the description, the dialogue and the retrieval candidates; reply with the most "
    "likely answer as one short declarative sentence."
)
REFORMULATE_SYSTEM = (
    "Rewrite the description and the dialogue below into ONE caption-style description of "
    "the place that contains every fact stated in them and nothing else. Treat answers like "
    '"I don\'t know." as adding nothing. Reply with the description only.'
)
PARAPHRASE_SYSTEM = (
    "Paraphrase the following description of a street place. Keep every fact and add "
    "nothing. Reply with the paraphrase only."
)

UNCERTAIN = re.compile(
    r"\b(?:uncertain|unknown|not\s+sure|cannot|can't|can\s+not|unanswerable|no\s+information|"
    r"not\s+(?:mentioned|specified|stated|answered)|(?:don't|do\s+not)\s+know)\b",
    re.IGNORECASE,
)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:[-*\d.)\s]+|(?:question|q)\s*\d*\s*[:.\-]\s*)+", re.IGNORECASE)

GENERIC_FALLBACKS = (
    "What colour is the biggest building?",
    "What are the pavements laid with?",
    "Is the street wide or narrow?",
    "Are there any trees?",
    "What does the nearest shop sign say?",
)


def parse_question(text: str) -> str | None:
    """The first question in an LLM reply, or None when there is no usable one.

    Only text ending in "?" counts: a reply that is not a question (a refusal, an
    explanation, noise) must not be put to the user."""
    text = _THINK.sub(" ", text)
    for line in text.splitlines():
        line = _LEAD.sub("", line.strip()).strip().strip("\"'`“”*").strip()
        if "?" not in line:
            continue
        q = line[: line.index("?") + 1].strip()
        # Keep only the last sentence before the "?" ("Good idea. Is there a bench?").
        q = re.split(r"(?<=[.!])\s+", q)[-1].strip().strip("\"'`“”*").strip()
        n_words = len(q.split())
        if 3 <= n_words <= 40 and re.search(r"[A-Za-z]", q):
            return q[0].upper() + q[1:]
    return None


def is_uncertain(reply: str) -> bool:
    """True when an LLM's attempt to answer says the answer is not known (or is empty)."""
    cleaned = _THINK.sub(" ", reply).strip()
    return not cleaned or bool(UNCERTAIN.search(cleaned))


def kl_divergence(p: Sequence[float], q: Sequence[float], eps: float = 1e-12) -> float:
    """KL(p || q) of two distributions over the same support (q floored at eps)."""
    return float(
        sum(pi * math.log(pi / max(qi, eps)) for pi, qi in zip(p, q, strict=True) if pi > 0)
    )


def _dialogue_text(d0: str, turns: Sequence[tuple[str, str]]) -> str:
    lines = [f"[Description] {d0}", "[Dialogue]"]
    lines += [f"Q: {q}\nA: {a}" for q, a in turns] or ["(none yet)"]
    return "\n".join(lines)


def _turns(state: DialogueState) -> list[tuple[str, str]]:
    return [(q.text, a) for q, a in zip(state.questions, state.answers, strict=False)]


class PlugIRQuestioner:
    """PlugIR's question generation, redundancy filter and KL selection over a `ChatModel`.

    ``search`` is the retriever (the same one the engine uses), called once per surviving
    question to measure how its predicted answer moves the candidate distribution.
    ``evidence`` supplies what the candidates' images show (the robot's view of them, as
    PlugIR captions its candidate images): the summary names each cluster's best candidate
    by its most confident phrases; ``embed`` embeds those texts for the k-means summary
    (TF-IDF vectors when None, so it runs model-free).
    """

    name = "plugir"

    def __init__(
        self,
        chat: ChatModel,
        search: SearchFn,
        evidence: EvidenceSource,
        embed: EmbedFn | None = None,
        n_questions: int = 5,
        n_clusters: int = 10,
        pool_size: int = 50,
        pool_shrink: float = 0.8,
        kl_start: int = 0,
        kl_temperature: float = 0.05,
        summary_phrases: int = 4,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        regenerations: int = 1,
        seed: int = 0,
    ) -> None:
        if n_questions < 1 or n_clusters < 1 or pool_size < 1 or not 0 < pool_shrink <= 1:
            raise ValueError("n_questions, n_clusters, pool_size >= 1 and 0 < pool_shrink <= 1")
        self.chat = chat
        self.search = search
        self.evidence = evidence
        self.embed = embed
        self.n_questions = n_questions
        self.n_clusters = n_clusters
        self.pool_size = pool_size
        self.pool_shrink = pool_shrink
        self.kl_start = kl_start
        self.kl_temperature = kl_temperature
        self.summary_phrases = summary_phrases
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.regenerations = regenerations
        self.seed = seed
        self.stats: Counter[str] = Counter()
        self._embeddings: dict[str, np.ndarray] = {}
        self._dialogues: dict[str, tuple[str, list[tuple[str, str]], str]] = {}
        self._last_reformulation: dict[str, str] = {}

    # -- 1. candidate summary -------------------------------------------------------------
    def pool(self, state: DialogueState) -> list[PlaceHit]:
        """Top-N of this round's ranking, N = pool_size * pool_shrink^round (>= n_clusters)."""
        n = max(self.n_clusters, round(self.pool_size * self.pool_shrink**state.round))
        return list(state.ranking[:n])

    def _text(self, place_id: str, limit: int) -> str:
        ev = self.evidence.get(place_id)
        return "; ".join(ev.top_phrases(limit)) if ev is not None else ""

    def _vectors(self, ids: Sequence[str]) -> np.ndarray:
        texts = [self._text(i, 24) for i in ids]
        if self.embed is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            if not any(t.strip() for t in texts):
                return np.zeros((len(ids), 1))
            return np.asarray(TfidfVectorizer().fit_transform(texts).toarray(), dtype=float)
        missing = [i for i, pid in enumerate(ids) if pid not in self._embeddings]
        if missing:
            vecs = np.asarray(self.embed([texts[i] for i in missing]), dtype=float)
            for i, v in zip(missing, vecs, strict=True):
                self._embeddings[ids[i]] = v
        return np.stack([self._embeddings[pid] for pid in ids])

    def summarize(self, hits: Sequence[PlaceHit]) -> list[str]:
        """One caption per k-means cluster of the candidates, clusters in rank order of their
        best member, whose caption represents the cluster (PlugIR's "most certain")."""
        ids = [h.place_id for h in hits if self.evidence.get(h.place_id) is not None]
        if not ids:
            return []
        labels = np.arange(len(ids))
        if self.n_clusters < len(ids):
            from sklearn.cluster import KMeans

            x = self._vectors(ids)
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms > 0, norms, 1.0)
            # Identical candidates (same description) cannot fill separate clusters.
            k = min(self.n_clusters, len(np.unique(x.round(8), axis=0)))
            labels = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(x)
        best: dict[int, str] = {}
        for pid, label in zip(ids, labels.tolist(), strict=True):
            best.setdefault(int(label), pid)  # ids are in rank order: first is best-ranked
        out: list[str] = []
        for pid in best.values():
            text = self._text(pid, self.summary_phrases)
            if text and text not in out:
                out.append(text)
        return out

    # -- prompts ---------------------------------------------------------------------------
    def _question_conv(self, state: DialogueState, summary: Sequence[str]) -> list[dict[str, Any]]:
        cands = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(summary)) or "(none)"
        asked = "\n".join(f"- {q.text}" for q in state.questions) or "(none)"
        user = (
            f"{_dialogue_text(state.d0, _turns(state))}\n[Retrieval Candidates]\n{cands}\n"
            f"[Already asked]\n{asked}\nYour question:"
        )
        return [{"role": "system", "content": QUESTION_SYSTEM}, {"role": "user", "content": user}]

    def _filter_conv(self, state: DialogueState, question: str) -> list[dict[str, Any]]:
        user = f"{_dialogue_text(state.d0, _turns(state))}\n[Question] {question}"
        return [{"role": "system", "content": FILTER_SYSTEM}, {"role": "user", "content": user}]

    def _predict_conv(
        self, state: DialogueState, summary: Sequence[str], question: str
    ) -> list[dict[str, Any]]:
        cands = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(summary)) or "(none)"
        user = (
            f"{_dialogue_text(state.d0, _turns(state))}\n[Retrieval Candidates]\n{cands}\n"
            f"[Question] {question}"
        )
        return [{"role": "system", "content": PREDICT_SYSTEM}, {"role": "user", "content": user}]

    # -- 2. generation ---------------------------------------------------------------------
    def _generate(
        self, state: DialogueState, summary: Sequence[str], asked: set[Any], attempt: int
    ) -> list[str]:
        replies = self.chat.generate(
            [self._question_conv(state, summary)],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            n=self.n_questions,
            seed=self.seed + 1000 * state.round + attempt,
        )[0]
        out: list[str] = []
        keys: set[Any] = set()
        for reply in replies:
            self.stats["generated"] += 1
            q = parse_question(reply)
            if q is None:
                self.stats["unparsed"] += 1
                continue
            key = free_question(q).key
            if key in asked or key in keys:
                self.stats["repeated"] += 1
                continue
            keys.add(key)
            out.append(q)
        return out

    # -- 3. redundancy filter ----------------------------------------------------------------
    def filter_redundant(self, state: DialogueState, questions: Sequence[str]) -> list[str]:
        """The questions the LLM cannot answer from the description and dialogue alone."""
        if not questions:
            return []
        replies = self.chat.generate(
            [self._filter_conv(state, q) for q in questions],
            max_new_tokens=self.max_new_tokens,
            temperature=0.0,
            n=1,
            seed=self.seed,
        )
        kept = []
        for q, (reply,) in zip(questions, replies, strict=True):
            if is_uncertain(reply):
                kept.append(q)
            else:
                self.stats["redundant"] += 1
                log.debug("dropped %r: answerable from the dialogue (%r)", q, reply)
        return kept

    # -- 4. KL selection ---------------------------------------------------------------------
    def _distribution(self, hits: Sequence[PlaceHit], ids: Sequence[str]) -> list[float]:
        scores = {h.place_id: h.score for h in hits}
        floor = min(scores.values()) if scores else 0.0
        # A place that fell out of the returned list scores no better than the last one.
        return softmax_belief([scores.get(i, floor) for i in ids], self.kl_temperature)

    def select(
        self, state: DialogueState, summary: Sequence[str], questions: Sequence[str]
    ) -> tuple[str, list[tuple[str, str, float]]]:
        """The question of smallest KL(before || after its predicted answer), and the scores."""
        pool = self.pool(state)
        ids = [h.place_id for h in pool[self.kl_start :]] or [h.place_id for h in pool]
        before = self._distribution(pool, ids)
        predicted = self.chat.generate(
            [self._predict_conv(state, summary, q) for q in questions],
            max_new_tokens=self.max_new_tokens,
            temperature=0.0,
            n=1,
            seed=self.seed,
        )
        scored: list[tuple[str, str, float]] = []
        k = max(len(state.ranking), len(pool))
        for q, (answer,) in zip(questions, predicted, strict=True):
            answer = " ".join(_THINK.sub(" ", answer).split())
            after = self._distribution(self.search(f"{state.query} {answer}".strip(), k), ids)
            scored.append((q, answer, kl_divergence(before, after)))
        best = min(scored, key=lambda s: s[2])  # ties: the earlier sample
        return best[0], scored

    # -- fallback ------------------------------------------------------------------------------
    def fallback(self, state: DialogueState) -> Question | None:
        """A generic question never asked before, used when the LLM gave nothing usable."""
        asked = {q.key for q in state.questions}
        pool = list(GENERIC_FALLBACKS) + [
            f"Is there {'an' if c[0] in 'aeiou' else 'a'} {c}?" for c in categories()
        ]
        for text in pool:
            q = free_question(text, reasoning="fallback: no usable LLM question", fallback=True)
            if q.key not in asked:
                self.stats["fallback"] += 1
                return q
        self.stats["exhausted"] += 1
        return None

    def ask(self, state: DialogueState) -> Question | None:
        """Summary -> n sampled questions -> redundancy filter -> smallest-KL question."""
        self.stats["asked"] += 1
        asked = {q.key for q in state.questions}
        summary = self.summarize(self.pool(state))
        questions: list[str] = []
        for attempt in range(self.regenerations + 1):
            if attempt:
                self.stats["regenerated"] += 1
            questions = self.filter_redundant(state, self._generate(state, summary, asked, attempt))
            if questions:
                break
        if not questions:
            q = self.fallback(state)
        else:
            text, scored = self.select(state, summary, questions)
            reasoning = "; ".join(f"KL={kl:.4f} {qq!r} -> {a!r}" for qq, a, kl in scored)
            q = free_question(text, reasoning=reasoning)
        if q is not None:
            self._dialogues[state.query] = (state.d0, _turns(state), q.text)
        return q

    # -- context reformulation ---------------------------------------------------------------
    def reformulate_dialogue(
        self, d0: str, turns: Sequence[tuple[str, str]], key: str | None = None
    ) -> str:
        """One caption-style query from d0 and the Q/A turns; paraphrased when unchanged.

        An empty or question-like reply falls back to d0 + answers, so a weak LLM can never
        make retrieval lose what the user said."""
        plain = " ".join([d0, *(a for _, a in turns)]).strip()
        if not turns:
            return d0
        user = _dialogue_text(d0, turns)
        conv = [
            {"role": "system", "content": REFORMULATE_SYSTEM},
            {"role": "user", "content": user},
        ]
        reply = self.chat.generate([conv], self.max_new_tokens * 4, 0.0, n=1, seed=self.seed)[0][0]
        text = " ".join(_THINK.sub(" ", reply).split())
        if not text or text.endswith("?"):
            self.stats["reformulate_failed"] += 1
            return plain
        cache_key = key if key is not None else d0
        if self._last_reformulation.get(cache_key) == text:
            para = [
                {"role": "system", "content": PARAPHRASE_SYSTEM},
                {"role": "user", "content": text},
            ]
            reply = self.chat.generate(
                [para], self.max_new_tokens * 4, self.temperature, n=1, seed=self.seed + len(turns)
            )[0][0]
            text = " ".join(_THINK.sub(" ", reply).split()) or text
            self.stats["paraphrased"] += 1
        self._last_reformulation[cache_key] = text
        return text

    def reformulate(self, state: DialogueState) -> str:
        """The PlugIR retrieval query of this state (see `reformulate_dialogue`)."""
        return self.reformulate_dialogue(state.d0, _turns(state), key=state.dialogue_id)

    def dialogue_for(self, text: str) -> tuple[str, list[tuple[str, str]]] | None:
        """Recover (d0, Q/A turns) from an engine query d0 + a_1..a_t, using the questions
        this questioner asked; None for a query it has not seen (e.g. round 0)."""
        best: str | None = None
        for prefix in self._dialogues:
            if text.startswith(prefix + " ") and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return None
        d0, turns, question = self._dialogues[best]
        return d0, [*turns, (question, text[len(best) + 1 :].strip())]


class PlugIRSearch:
    """A `SearchFn` that retrieves with PlugIR's reformulated query instead of d0 + answers.

    Give the engine this wrapper and the questioner the raw ``search``: the wrapper maps the
    engine's query text back to the dialogue through `PlugIRQuestioner.dialogue_for`, so the
    reformulation sees the questions too. Unknown texts (round 0) are searched unchanged.
    """

    def __init__(self, search: SearchFn, questioner: PlugIRQuestioner) -> None:
        self.search = search
        self.questioner = questioner
        self.queries: list[str] = []

    def __call__(self, text: str, k: int) -> list[PlaceHit]:
        """search(reformulated text, k)."""
        found = self.questioner.dialogue_for(text)
        query = text if found is None else self.questioner.reformulate_dialogue(*found)
        self.queries.append(query)
        return self.search(query, k)
