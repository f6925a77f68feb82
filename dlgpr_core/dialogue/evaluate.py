"""Simulated interactive benchmark: dialogues against a map, summarised as in the paper.

Ranks are taken over the whole map (search k = number of places), because BRI and
Recall@K are defined on the target's rank among all places, not within a short list.

Every finished dialogue is appended to a JSONL log at once, keyed by (city, questioner,
update, dialogue id); a rerun skips what the log holds, so an interrupted evaluation
resumes. Each dialogue gets its own questioner built from a seed derived from the run seed
and the dialogue's index, so a resumed run gives exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.consistency import FactConsistencyReranker
from dlgpr_core.dialogue.engine import (
    DialogueConfig,
    DialogueEngine,
    DialogueResult,
    DialogueState,
    SearchFn,
    User,
)
from dlgpr_core.dialogue.metrics import bri, cumulative_recall_at_k
from dlgpr_core.dialogue.questioners import Questioner
from dlgpr_core.dialogue.questions import Question
from dlgpr_core.dialogue.user import FactUser
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.report import PlaceHit

Update = Literal["text", "facts"]
"""How an answer changes the ranking: "text" appends it to the query only (the paper);
"facts" also down-weights places whose annotated facts contradict it."""

QuestionerFactory = Callable[[int], Questioner]
"""dialogue seed -> a fresh questioner (models inside may be shared between calls)."""
UserFactory = Callable[[PlaceAnnotation], User]


def map_search(map_db: MapDatabase, encoder: Encoder) -> SearchFn:
    """The engine's search callable over a map (exact search, fine re-ranking if any)."""

    def search(text: str, k: int) -> list[PlaceHit]:
        return map_db.search(text, encoder, k=k)

    return search


def _chosen(places: Sequence[PlaceAnnotation], n: int | None, seed: int) -> list[PlaceAnnotation]:
    chosen = sorted(places, key=lambda p: (p.city, p.place_id))
    random.Random(seed).shuffle(chosen)
    return chosen if n is None else chosen[:n]


@dataclass(frozen=True)
class DialogueSummary:
    """Per-round cumulative Recall@K and BRI of a set of dialogues."""

    n_dialogues: int
    n_rounds: int
    recall: dict[int, list[float]]
    bri: float
    mean_questions: float


def summarise(
    results: Sequence[DialogueResult], max_rounds: int, ks: Sequence[int] = (1, 5, 10)
) -> DialogueSummary:
    """Recall@K per round 0..max_rounds and BRI; early-stopped dialogues keep their rank."""
    if not results:
        raise ValueError("no dialogues to summarise")
    ranks = np.array([r.padded_ranks(max_rounds + 1) for r in results], dtype=np.int64)
    recall = cumulative_recall_at_k(ranks, ks)
    return DialogueSummary(
        n_dialogues=len(results),
        n_rounds=max_rounds + 1,
        recall={k: [float(x) for x in v] for k, v in recall.items()},
        bri=bri(ranks),
        mean_questions=float(np.mean([len(r.final.questions) for r in results])),
    )


# --- the Table 1 run -------------------------------------------------------------------


@dataclass(frozen=True)
class DialogueRecord:
    """One finished dialogue as logged (one JSONL line)."""

    city: str
    questioner: str
    update: str
    dialogue_id: str
    target: str
    d0: str
    questions: list[str]
    answers: list[str]
    ranks: list[int]
    """0-indexed whole-map rank of the target after each round (0 = d0 alone)."""
    stop_reason: str
    fallbacks: int
    """Questions asked in place of unusable model output (failed parses)."""
    question_ms: list[float]
    """Time the questioner took for each question."""
    round_ms: list[float]
    """Wall time of each answered round: answer + retrieval + re-ranking + next question."""

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity in the log: a rerun skips records it already holds."""
        return (self.city, self.questioner, self.update, self.dialogue_id)


class DialogueLog:
    """Append-only JSONL of `DialogueRecord`s; a torn last line (crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[DialogueRecord]:
        """Every complete record in the file."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                out.append(DialogueRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # an interrupted write; that dialogue simply runs again
        return out

    def append(self, record: DialogueRecord) -> None:
        """Write one record and flush it, so a crash loses at most the dialogue in flight."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as f:
            # After a crash mid-line, start a fresh line so the torn one stays alone.
            f.write(("\n" if torn else "") + json.dumps(asdict(record), ensure_ascii=False) + "\n")
            f.flush()


class _Timed:
    """Wraps a questioner to time each question, per dialogue (a batched call's time is
    shared equally by the questions it produced)."""

    def __init__(self, inner: Questioner) -> None:
        self.inner = inner
        self.name = inner.name
        self.ms: dict[str, list[float]] = {}

    def ask(self, state: DialogueState) -> Question | None:
        t = time.perf_counter()
        q = self.inner.ask(state)
        self.ms.setdefault(state.dialogue_id, []).append(1000 * (time.perf_counter() - t))
        return q

    def ask_many(self, states: Sequence[DialogueState]) -> list[Question | None]:
        inner_many = getattr(self.inner, "ask_many", None)
        if inner_many is None:
            return [self.ask(s) for s in states]
        t = time.perf_counter()
        out: list[Question | None] = list(inner_many(states))
        each = 1000 * (time.perf_counter() - t) / max(len(states), 1)
        for s in states:
            self.ms.setdefault(s.dialogue_id, []).append(each)
        return out


def _lockstep(
    engine: DialogueEngine, d0s: Sequence[str], dids: Sequence[str], users: Sequence[User]
) -> tuple[list[list[DialogueState]], list[list[float]]]:
    """Run dialogues side by side: every round is one `step_many` (one batched question
    call for a batching questioner). Returns each dialogue's states and its per-round wall
    time (a batched round's time shared equally by the dialogues in it)."""
    history = [[s] for s in engine.start_many(d0s, dids)]
    round_ms: list[list[float]] = [[] for _ in d0s]
    while True:
        active = [i for i, h in enumerate(history) if not h[-1].done and h[-1].pending_question]
        if not active:
            return history, round_ms
        answers = []
        for i in active:
            question = history[i][-1].pending_question
            assert question is not None
            answers.append(users[i].answer(question))
        t = time.perf_counter()
        stepped = engine.step_many([history[i][-1] for i in active], answers)
        each = 1000 * (time.perf_counter() - t) / len(active)
        for i, state in zip(active, stepped, strict=True):
            history[i].append(state)
            round_ms[i].append(each)


@dataclass(frozen=True)
class EvalSettings:
    """What one `evaluate_city` run does."""

    n: int | None = 100
    max_rounds: int = 5
    top_k: int = 10
    confidence: float | None = 0.9
    temperature: float = 0.05
    epsilon: float = 0.05
    """Answer-noise probability of the "facts" update."""
    seed: int = 0
    batch_size: int = 1
    """Dialogues run in lockstep, their questions asked in one batched call per round
    (a VLM on a GPU). Above 1 the dialogues of a batch share one questioner, so keep 1 for
    seeded rule-based questioners whose results must not depend on the batching."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def evaluate_city(
    search: SearchFn,
    map_size: int,
    places: Sequence[PlaceAnnotation],
    questioner_name: str,
    make: QuestionerFactory,
    update: Update,
    settings: EvalSettings,
    log: DialogueLog,
    done: set[tuple[str, str, str, str]] | None = None,
    make_user: UserFactory = FactUser,
    on_dialogue: Callable[[DialogueRecord], None] | None = None,
) -> Iterator[DialogueRecord]:
    """Run (or skip, when logged) one dialogue per chosen place; yields each record.

    `search` ranks the map (`map_search` for a real one); `map_size` is its number of
    places, so that ranks are whole-map ranks.
    """
    cfg = DialogueConfig(
        max_rounds=settings.max_rounds,
        top_k=settings.top_k,
        search_k=max(settings.top_k, map_size),
        confidence=settings.confidence,
        temperature=settings.temperature,
    )
    by_id = places_by_id(places)
    reranker = (
        FactConsistencyReranker(by_id, settings.epsilon, settings.temperature)
        if update == "facts"
        else None
    )
    done = done if done is not None else {r.key for r in log.read()}
    todo = [
        (i, place, f"{place.city}:{place.place_id}:{settings.seed}")
        for i, place in enumerate(_chosen(places, settings.n, settings.seed))
    ]
    todo = [t for t in todo if (t[1].city, questioner_name, update, t[2]) not in done]
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        timed = _Timed(make(settings.seed * 1_000_003 + chunk[0][0]))
        engine = DialogueEngine(search, timed, cfg, reranker=reranker)
        histories, round_ms = _lockstep(
            engine,
            [p.caption for _, p, _ in chunk],
            [did for _, _, did in chunk],
            [make_user(p) for _, p, _ in chunk],
        )
        for (_, place, did), states, ms in zip(chunk, histories, round_ms, strict=True):
            state = states[-1]
            target = namespaced_place_id(place.city, place.place_id)
            record = DialogueRecord(
                city=place.city,
                questioner=questioner_name,
                update=update,
                dialogue_id=did,
                target=target,
                d0=place.caption,
                questions=[q.text for q in state.questions],
                answers=list(state.answers),
                ranks=[s.rank_of(target) for s in states],
                stop_reason=state.stop_reason or "",
                fallbacks=sum(q.fallback for q in state.questions),
                question_ms=[round(x, 3) for x in timed.ms.get(did, [])],
                round_ms=[round(x, 3) for x in ms],
            )
            log.append(record)
            done.add((place.city, questioner_name, update, did))
            if on_dialogue is not None:
                on_dialogue(record)
            yield record


# --- Table 1 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    """One (city, questioner, update) row of the Table-1-style summary."""

    city: str
    questioner: str
    update: str
    n: int
    recall: dict[int, list[float]]
    """K -> cumulative Recall@K (in [0, 1]) at rounds 0..max_rounds."""
    bri: float
    mean_rounds: float
    fallbacks: int
    question_ms_p50: float
    round_ms_p50: float
    extra: dict[str, Any] = field(default_factory=dict)


def summarise_records(
    records: Sequence[DialogueRecord], max_rounds: int, ks: Sequence[int] = (1, 5, 10)
) -> list[TableRow]:
    """Group records by (city, questioner, update) and compute each group's row."""
    groups: dict[tuple[str, str, str], list[DialogueRecord]] = {}
    for r in records:
        groups.setdefault((r.city, r.questioner, r.update), []).append(r)
    rows = []
    for (city, qn, upd), rs in sorted(groups.items()):
        ranks = np.array(
            [(r.ranks + [r.ranks[-1]] * (max_rounds + 1))[: max_rounds + 1] for r in rs],
            dtype=np.int64,
        )
        recall = cumulative_recall_at_k(ranks, ks)
        qms = [x for r in rs for x in r.question_ms]
        rms = [x for r in rs for x in r.round_ms]
        rows.append(
            TableRow(
                city=city,
                questioner=qn,
                update=upd,
                n=len(rs),
                recall={k: [float(x) for x in v] for k, v in recall.items()},
                bri=bri(ranks),
                mean_rounds=float(np.mean([len(r.answers) for r in rs])),
                fallbacks=int(sum(r.fallbacks for r in rs)),
                question_ms_p50=float(np.median(qms)) if qms else 0.0,
                round_ms_p50=float(np.median(rms)) if rms else 0.0,
            )
        )
    return rows


def table_markdown(rows: Sequence[TableRow], rounds: Sequence[int] = (0, 3, 5)) -> str:
    """Table 1's layout: R@1 and R@5 (%) at the given rounds, BRI, rounds used, parse fails."""
    head = ["city", "questioner", "update", "n"]
    head += [f"R@1 r{t}" for t in rounds] + [f"R@5 r{t}" for t in rounds]
    head += ["BRI", "rounds", "failed parses", "ms/question", "ms/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.city, r.questioner, r.update, str(r.n)]
        for k in (1, 5):
            curve = r.recall[k]
            cells += [f"{100 * curve[min(t, len(curve) - 1)]:.1f}" for t in rounds]
        cells += [
            f"{r.bri:.2f}",
            f"{r.mean_rounds:.2f}",
            str(r.fallbacks),
            f"{r.question_ms_p50:.1f}",
            f"{r.round_ms_p50:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[TableRow], out: Path, meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """`<out>.md` (Table 1 layout) and `<out>.json` (full curves + run settings)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.write_text(table_markdown(rows), encoding="utf-8")
    js.write_text(
        json.dumps({"settings": dict(meta), "rows": [asdict(r) for r in rows]}, indent=2),
        encoding="utf-8",
    )
    return md, js


def plot_recall(rows: Sequence[TableRow], out_png: Path, ks: Sequence[int] = (1, 5)) -> Path:
    """R@K against the round, one line per (city, questioner, update), one panel per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for r in rows:
            curve = [100 * x for x in r.recall[k]]
            style = "-" if r.update == "facts" else "--"
            label = f"{r.questioner} ({r.update})" + (
                f" {r.city}" if len({x.city for x in rows}) > 1 else ""
            )
            ax.plot(range(len(curve)), curve, style, marker="o", label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(f"cumulative R@{k} (%)")
        ax.set_title(f"R@{k} per dialogue round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
