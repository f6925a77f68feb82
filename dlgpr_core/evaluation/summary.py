"""Summaries of simulated dialogues as the paper reports them: Recall@K per round, BRI,
the Table 1 layout, its JSON and a plot.

Ranks are 0-indexed whole-map ranks of the target after each round; a dialogue that stopped
early keeps its last rank for the remaining rounds (its query no longer changes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlgpr_core.dialogue.engine import DialogueResult
from dlgpr_core.dialogue.metrics import bri, cumulative_recall_at_k
from dlgpr_core.evaluation.log import DialogueRecord


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


@dataclass(frozen=True)
class TableRow:
    """One (city, questioner, update, evidence, user) row of the Table-1-style summary."""

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
    evidence: str = ""
    user: str = "facts"
    unread: float = 0.0
    """Share of answers the robot could not read."""

    @property
    def label(self) -> str:
        """How the row is named in plots: its conditions, the oracle ones said so."""
        ev = f"{self.evidence} evidence" if self.evidence else ""
        parts = [self.questioner, self.update, ev, self.user if self.user != "facts" else ""]
        return " / ".join(p for p in parts if p)


def summarise_records(
    records: Sequence[DialogueRecord], max_rounds: int, ks: Sequence[int] = (1, 5, 10)
) -> list[TableRow]:
    """Group records by condition (city, questioner, update, evidence, user) and compute
    each group's row. A group whose records ran with different settings (two seeds, other
    rounds) is refused rather than averaged into one row."""
    groups: dict[tuple[str, str, str, str, str], list[DialogueRecord]] = {}
    for r in records:
        groups.setdefault((r.city, r.questioner, r.update, r.evidence, r.user), []).append(r)
    rows = []
    for (city, qn, upd, ev, who), rs in sorted(groups.items()):
        kinds = {json.dumps(r.settings, sort_keys=True, default=str) for r in rs}
        if len(kinds) > 1:
            raise ValueError(
                f"the dialogues of {city} / {qn} / {upd} / {ev} / {who} ran with "
                f"{len(kinds)} different settings ({' | '.join(sorted(kinds))[:600]}); "
                "summarise each run on its own"
            )
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
                evidence=ev,
                user=who,
                unread=sum(r.unread for r in rs) / max(1, sum(len(r.answers) for r in rs)),
            )
        )
    return rows


def table_markdown(rows: Sequence[TableRow], rounds: Sequence[int] = (0, 3, 5)) -> str:
    """Table 1's layout: R@1 and R@5 (%) at the given rounds, BRI, rounds used, parse fails."""
    head = ["city", "questioner", "update", "evidence", "user", "n"]
    head += [f"R@1 r{t}" for t in rounds] + [f"R@5 r{t}" for t in rounds]
    head += ["BRI", "rounds", "failed parses", "unread answers", "ms/question", "ms/round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        evidence = f"{r.evidence} (oracle)" if r.evidence == "oracle" else r.evidence
        questioner = f"{r.questioner} (oracle)" if r.questioner == "oracle" else r.questioner
        cells = [r.city, questioner, r.update, evidence, r.user, str(r.n)]
        for k in (1, 5):
            curve = r.recall[k]
            cells += [f"{100 * curve[min(t, len(curve) - 1)]:.1f}" for t in rounds]
        cells += [
            f"{r.bri:.2f}",
            f"{r.mean_rounds:.2f}",
            str(r.fallbacks),
            f"{100 * r.unread:.0f}%",
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
    """R@K against the round, one line per condition, one panel per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for r in rows:
            curve = [100 * x for x in r.recall[k]]
            style = "-" if r.update == "evidence" else "--"
            label = r.label + (f" {r.city}" if len({x.city for x in rows}) > 1 else "")
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
