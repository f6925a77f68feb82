"""Two evaluation runs compared dialogue by dialogue: which dialogues one wins and the other
loses, and how likely so lopsided a split is by chance.

Two runs of `dlgpr eval` with the same cities, seed and rounds hold the *same* dialogues
(target, first description, simulated user), so they can be compared pair by pair. That is
far sharper than comparing their two Recall@K, which each carry the sampling noise of the
targets (about 2 points at R@1 near 85% over 300 dialogues): most dialogues end the same
way in both runs, and only the discordant ones (won by one run, lost by the other) say
which is better. Their split is tested exactly (McNemar's test: under "no difference"
each discordant dialogue is a fair coin, so the two-sided p-value is a binomial tail).

Pairs are matched by (city, questioner, update, user, dialogue id) and the kind of
evidence ("learned" pairs with "learned:runs/x", "oracle" with "oracle"), so two evidence
models, two code versions or two settings of one model can be compared. Dialogues whose
target or first description differ are not the same dialogue (another seed) and are
refused, as is a log holding two records for one pair.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlgpr_core.evaluation.log import DialogueLog, DialogueRecord

PairKey = tuple[str, str, str, str, str, str]
"""(city, questioner, update, evidence kind, user, dialogue id)."""


def evidence_kind(evidence: str) -> str:
    """The annotator of an evidence label: ``learned:runs/x`` -> ``learned``."""
    return evidence.split(":", 1)[0]


def pair_key(record: DialogueRecord) -> PairKey:
    return (
        record.city,
        record.questioner,
        record.update,
        evidence_kind(record.evidence),
        record.user,
        record.dialogue_id,
    )


def hit(record: DialogueRecord, k: int, round_: int) -> bool:
    """Whether the target was in the top `k` at some round <= `round_` (cumulative
    Recall@K's first-hitting definition; a dialogue that stopped early keeps its last rank)."""
    ranks = record.ranks[: round_ + 1]
    return min(ranks) < k


def mcnemar_p(won: int, lost: int) -> float:
    """Exact two-sided p-value of a split of discordant pairs under "no difference"
    (each pair a fair coin): 2 x P(Binomial(won + lost, 1/2) <= min(won, lost)), at most 1."""
    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedRow:
    """One condition of the two runs compared."""

    city: str
    questioner: str
    update: str
    evidence: str
    """The base run's evidence label, then the other's when they differ."""
    user: str
    n: int
    """Dialogues in both runs."""
    base: float
    """Base run's cumulative Recall@K at the round, over these dialogues, in [0, 1]."""
    other: float
    won: int
    """Dialogues the other run hits and the base run misses."""
    lost: int
    """Dialogues the base run hits and the other run misses."""

    @property
    def p_value(self) -> float:
        """McNemar's exact two-sided p-value of won vs lost."""
        return mcnemar_p(self.won, self.lost)


@dataclass(frozen=True)
class PairedComparison:
    k: int
    round: int
    rows: list[PairedRow]
    only_base: int
    """Dialogues of the base run with no partner in the other (left out)."""
    only_other: int

    def markdown(self, base_name: str, other_name: str) -> str:
        head = (
            f"Paired comparison, cumulative R@{self.k} at round {self.round} over places, "
            f"in %: base `{base_name}`, other `{other_name}`. Won = dialogues the other run "
            "hits and the base misses; p = McNemar's exact two-sided test of won vs lost.\n\n"
            f"| city | questioner | update | evidence | user | n | base | other | "
            f"won | lost | p |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
        lines = [
            f"| {r.city} | {r.questioner} | {r.update} | {r.evidence} | {r.user} | {r.n} | "
            f"{100 * r.base:.1f} | {100 * r.other:.1f} | {r.won} | {r.lost} | "
            f"{r.p_value:.3g} |"
            for r in self.rows
        ]
        tail = ""
        if self.only_base or self.only_other:
            tail = (
                f"\n\nLeft out, without a partner (conditions only one run has, such as an "
                f"oracle-evidence row): {self.only_base} dialogue(s) of the base run, "
                f"{self.only_other} of the other."
            )
        return head + "\n".join(lines) + tail + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "round": self.round,
            "rows": [asdict(r) | {"p_value": r.p_value} for r in self.rows],
            "only_base": self.only_base,
            "only_other": self.only_other,
        }


def _index(records: Sequence[DialogueRecord], name: str) -> dict[PairKey, DialogueRecord]:
    out: dict[PairKey, DialogueRecord] = {}
    for r in records:
        key = pair_key(r)
        if key in out:
            raise ValueError(
                f"{name} holds two dialogues for {' / '.join(key)} ('{out[key].evidence}' and "
                f"'{r.evidence}'): compare runs with one evidence row of each kind, e.g. "
                "rerun with one --evidence per --out"
            )
        out[key] = r
    return out


def compare_records(
    base: Sequence[DialogueRecord],
    other: Sequence[DialogueRecord],
    k: int = 1,
    round_: int = 5,
    names: tuple[str, str] = ("the base run", "the other run"),
) -> PairedComparison:
    """Pair the two runs' dialogues and count, per condition, the dialogues each wins at
    cumulative Recall@`k` at round `round_`. Raises ValueError when no dialogue pairs, when
    paired dialogues are not the same dialogue (target or first description differ), or
    when a run holds two dialogues for one pair."""
    if k < 1 or round_ < 0:
        raise ValueError(f"k must be >= 1 and the round >= 0 (got k={k}, round={round_})")
    a, b = _index(base, names[0]), _index(other, names[1])
    common = [key for key in a if key in b]
    if not common:
        raise ValueError(
            f"no dialogue of {names[0]} has a partner in {names[1]}: pairs need the same "
            "city, questioner, update, user, kind of evidence and dialogue id"
        )
    differ = [key for key in common if (a[key].target, a[key].d0) != (b[key].target, b[key].d0)]
    if differ:
        key = differ[0]
        raise ValueError(
            f"{len(differ)} paired dialogue(s) are not the same dialogue (e.g. {key[-1]}: "
            f"target {a[key].target!r} vs {b[key].target!r}): the two runs drew their "
            "dialogues with different seeds or data; compare runs with the same --seed"
        )
    for name, run in zip(names, (a, b), strict=True):
        short = sorted({int(r.settings["rounds"]) for r in run.values() if "rounds" in r.settings})
        if short and short[0] < round_:
            raise ValueError(
                f"{name} ran dialogues of at most {short[0]} question(s): compare at "
                f"--round {short[0]} or less (a shorter run would count its last rank as "
                f"round {round_}'s)"
            )
    groups: dict[tuple[str, str, str, str, str], list[PairKey]] = {}
    for key in common:
        groups.setdefault(key[:5], []).append(key)
    rows = []
    for (city, qn, upd, _, who), keys in sorted(groups.items()):
        hits = [(hit(a[key], k, round_), hit(b[key], k, round_)) for key in keys]
        won = sum(1 for x, y in hits if y and not x)
        lost = sum(1 for x, y in hits if x and not y)
        labels = dict.fromkeys([a[keys[0]].evidence, b[keys[0]].evidence])
        rows.append(
            PairedRow(
                city=city,
                questioner=qn,
                update=upd,
                evidence=" vs ".join(labels),
                user=who,
                n=len(keys),
                base=sum(x for x, _ in hits) / len(keys),
                other=sum(y for _, y in hits) / len(keys),
                won=won,
                lost=lost,
            )
        )
    return PairedComparison(
        k=k,
        rows=rows + _pooled(rows),
        round=round_,
        only_base=len(a) - len(common),
        only_other=len(b) - len(common),
    )


def _pooled(rows: Sequence[PairedRow]) -> list[PairedRow]:
    """Per (questioner, update, evidence, user) over several cities, a row for them all
    (city "all"): the cities' dialogues are independent, so their splits add up."""
    groups: dict[tuple[str, str, str, str], list[PairedRow]] = {}
    for r in rows:
        groups.setdefault((r.questioner, r.update, r.evidence, r.user), []).append(r)
    out = []
    for (qn, upd, ev, who), rs in groups.items():
        if len(rs) < 2:
            continue
        n = sum(r.n for r in rs)
        out.append(
            PairedRow(
                city="all",
                questioner=qn,
                update=upd,
                evidence=ev,
                user=who,
                n=n,
                base=sum(r.base * r.n for r in rs) / n,
                other=sum(r.other * r.n for r in rs) / n,
                won=sum(r.won for r in rs),
                lost=sum(r.lost for r in rs),
            )
        )
    return out


def run_log(path: Path) -> Path:
    """An evaluation's dialogue log: the path itself, or ``dialogues.jsonl`` in an --out
    folder."""
    log = path / "dialogues.jsonl" if path.is_dir() else path
    if not log.is_file():
        raise FileNotFoundError(
            f"{path}: no dialogue log; give a `dlgpr eval --out` folder (it holds "
            "dialogues.jsonl) or the .jsonl itself"
        )
    return log


def compare_runs(
    base: Sequence[Path],
    other: Sequence[Path],
    k: int = 1,
    round_: int = 5,
    out: Path | None = None,
) -> PairedComparison:
    """`compare_records` over two runs, each one or more evaluation folders (or logs) read
    as one (e.g. one folder per city); with `out`, also writes ``<out>.md`` and
    ``<out>.json``."""
    names = (",".join(map(str, base)), ",".join(map(str, other)))
    result = compare_records(
        [r for p in base for r in DialogueLog(run_log(p)).read()],
        [r for p in other for r in DialogueLog(run_log(p)).read()],
        k=k,
        round_=round_,
        names=names,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(result.markdown(*names), "utf-8")
        meta = {"base": names[0], "other": names[1]} | result.to_json()
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1), "utf-8")
    return result
