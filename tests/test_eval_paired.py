"""`dlgpr eval-compare`: two evaluation runs compared dialogue by dialogue (hand-made logs,
hand-computed counts and p-values)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlgpr_core.cli import app
from dlgpr_core.evaluation.log import DialogueLog, DialogueRecord
from dlgpr_core.evaluation.paired import compare_records, compare_runs, hit, mcnemar_p


def rec(
    i: int,
    ranks: list[int],
    evidence: str = "learned",
    city: str = "C",
    target: str | None = None,
) -> DialogueRecord:
    return DialogueRecord(
        city=city,
        questioner="info-gain",
        update="evidence",
        dialogue_id=f"{city}:{i}:0",
        target=target or f"{city}:{i}",
        d0=f"description {i}",
        questions=["Q?"] * (len(ranks) - 1),
        answers=["A."] * (len(ranks) - 1),
        ranks=ranks,
        stop_reason="round limit",
        fallbacks=0,
        question_ms=[1.0] * (len(ranks) - 1),
        round_ms=[2.0] * (len(ranks) - 1),
        evidence=evidence,
    )


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_p(3, 3) == 1.0  # capped, not 2 x a tail above one half
    assert mcnemar_p(17, 29) == pytest.approx(mcnemar_p(29, 17))


def test_hit_is_cumulative_up_to_the_round() -> None:
    r = rec(0, [4, 0, 3, 2])  # first at the top in round 1, then pushed out
    assert not hit(r, 1, 0)
    assert hit(r, 1, 1) and hit(r, 1, 3)
    assert hit(r, 5, 0)
    # a dialogue that stopped early keeps its last rank for later rounds
    assert hit(rec(1, [7, 0]), 1, 5)


def test_won_and_lost_are_counted_per_condition_and_pooled_over_cities() -> None:
    base = [
        rec(0, [5, 0]),  # both hit
        rec(1, [5, 3]),  # base misses, other hits -> won
        rec(2, [5, 0]),  # base hits, other misses -> lost
        rec(3, [5, 4]),  # base misses, other hits -> won
        rec(4, [5, 6]),  # both miss
        rec(0, [2, 0], city="D"),  # base hits, other misses -> lost (city D)
    ]
    other = [
        rec(0, [5, 0], "learned:runs/x"),
        rec(1, [5, 0], "learned:runs/x"),
        rec(2, [5, 2], "learned:runs/x"),
        rec(3, [0, 4], "learned:runs/x"),
        rec(4, [5, 9], "learned:runs/x"),
        rec(0, [2, 1], "learned:runs/x", city="D"),
        rec(9, [0, 0], "learned:runs/x"),  # no partner in the base run
    ]
    cmp = compare_records(base, other, k=1, round_=1)
    by_city = {r.city: r for r in cmp.rows}
    c = by_city["C"]
    assert (c.n, c.won, c.lost) == (5, 2, 1)
    assert (c.base, c.other) == (pytest.approx(2 / 5), pytest.approx(3 / 5))
    assert c.evidence == "learned vs learned:runs/x"
    assert c.p_value == pytest.approx(1.0)
    d = by_city["D"]
    assert (d.n, d.won, d.lost) == (1, 0, 1)
    pooled = by_city["all"]
    assert (pooled.n, pooled.won, pooled.lost) == (6, 2, 2)
    assert pooled.base == pytest.approx(3 / 6) and pooled.other == pytest.approx(3 / 6)
    assert (cmp.only_base, cmp.only_other) == (0, 1)
    text = cmp.markdown("a", "b")
    assert (
        "| C | info-gain | evidence | learned vs learned:runs/x | facts | 5 | 40.0 | 60.0 | 2 | 1 |"
        in text
    )
    assert "1 of the other" in text
    # at K = 5 every dialogue of C but one hits in both runs
    at5 = {r.city: r for r in compare_records(base, other, k=5).rows}["C"]
    assert (at5.won, at5.lost, at5.base) == (0, 0, pytest.approx(4 / 5))


def test_oracle_rows_pair_with_oracle_rows_only() -> None:
    base = [rec(0, [3, 0], "learned"), rec(0, [3, 1], "oracle")]
    other = [rec(0, [3, 1], "learned:runs/y"), rec(0, [3, 0], "oracle")]
    rows = {r.evidence: r for r in compare_records(base, other).rows}
    assert (rows["learned vs learned:runs/y"].won, rows["learned vs learned:runs/y"].lost) == (0, 1)
    assert (rows["oracle"].won, rows["oracle"].lost) == (1, 0)


def test_different_dialogues_and_ambiguous_logs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"not the same dialogue.*--seed"):
        compare_records([rec(0, [1, 0])], [rec(0, [1, 0], target="C:7")])
    with pytest.raises(ValueError, match=r"two dialogues for .*one --evidence per --out"):
        compare_records([rec(0, [1, 0]), rec(0, [1, 0], "learned:runs/z")], [rec(0, [1, 0])])
    with pytest.raises(ValueError, match=r"no dialogue .* has a partner"):
        compare_records([rec(0, [1, 0])], [rec(0, [1, 0], city="D")])
    short = [replace(rec(0, [1, 0]), settings={"rounds": 3})]
    with pytest.raises(ValueError, match=r"at most 3 question\(s\): compare at --round 3"):
        compare_records([rec(0, [1, 0])], short, round_=5)
    assert compare_records([rec(0, [1, 0])], short, round_=3).rows[0].n == 1
    with pytest.raises(ValueError, match="k must be >= 1"):
        compare_records([rec(0, [1, 0])], [rec(0, [1, 0])], k=0)


def _write(folder: Path, records: list[DialogueRecord]) -> Path:
    log = DialogueLog(folder / "dialogues.jsonl")
    for r in records:
        log.append(r)
    return folder


def test_cli_compares_folders_read_as_one_run_and_writes_the_table(tmp_path: Path) -> None:
    a1 = _write(tmp_path / "a1", [rec(i, [3, 0 if i < 8 else 2]) for i in range(10)])
    a2 = _write(tmp_path / "a2", [rec(i, [3, 0], city="D") for i in range(4)])
    b1 = _write(tmp_path / "b1", [rec(i, [3, 0 if i < 2 else 2], "learned:r") for i in range(10)])
    b2 = _write(tmp_path / "b2", [rec(i, [3, 0], "learned:r", city="D") for i in range(4)])
    out = tmp_path / "cmp" / "table"
    res = CliRunner().invoke(
        app, ["eval-compare", f"{a1},{a2}", f"{b1},{b2}", "--round", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "| all | info-gain | evidence | learned vs learned:r | facts | 14 |" in res.output
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    c = next(r for r in data["rows"] if r["city"] == "C")
    assert (c["won"], c["lost"]) == (0, 6)
    assert c["p_value"] == pytest.approx(2 / 64)
    assert out.with_suffix(".md").is_file()
    direct = compare_runs([a1, a2], [b1, b2], round_=1)
    assert [r.lost for r in direct.rows] == [r["lost"] for r in data["rows"]]


def test_cli_names_a_folder_without_a_log(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [rec(0, [1, 0])])
    res = CliRunner().invoke(app, ["eval-compare", str(a), str(tmp_path / "missing")])
    assert res.exit_code != 0
    assert "no dialogue log" in str(res.exception) + res.output
