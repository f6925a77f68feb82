"""The `dlgpr` command as a user runs it: generate a city, build its map, query it.

These run the real console script in a subprocess with the embedded default encoder
(real pretrained towers from PyPI packages + the shipped trained heads).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dlgpr_core.data.annotations import read_annotations
from dlgpr_core.data.records import namespaced_place_id

pytestmark = pytest.mark.slow

DLGPR = shutil.which("dlgpr")


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert DLGPR, "the dlgpr console script is not installed: run `make setup`"
    proc = subprocess.run(
        [DLGPR, *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("city")
    run("synth", root, "--city", "Clitown", "--places", "24", "--views", "2", "--seed", "5")
    run("map", "build", root, "--map", root / "map", "--batch-size", "16")
    return root


def test_help_lists_every_command() -> None:
    out = run("--help").stdout
    for command in ("synth", "map", "demo", "eval", "bringup", "retriever"):
        assert command in out
    out = run("map", "--help").stdout
    for command in ("build", "query", "info", "index"):
        assert command in out


def test_query_prints_ranked_places_as_json(city: Path) -> None:
    place = read_annotations(city / "Annotations" / "Clitown.jsonl")[0]
    proc = run("map", "query", place.description, "--map", city / "map", "-k", "5", "--json")
    hits = json.loads(proc.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["place_id"].startswith("Clitown:") for h in hits)
    assert all(-90 <= h["lat"] <= 90 and -180 <= h["lon"] <= 180 for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    table = run("map", "query", place.caption, "--map", city / "map", "-k", "3").stdout
    assert "top 3 places" in table and "Clitown:" in table


def test_built_map_finds_described_places(city: Path) -> None:
    """The map the CLI built, queried in-process (one encoder load) for every place."""
    from dlgpr_core.encoders.factory import create_encoder
    from dlgpr_core.mapdb import MapDatabase

    places = read_annotations(city / "Annotations" / "Clitown.jsonl")
    assert len(places) == 24
    encoder = create_encoder("dlgpr-lite")
    with MapDatabase.open(city / "map") as db:
        top5 = sum(
            namespaced_place_id(p.city, p.place_id)
            in {h.place_id for h in db.search(p.description, encoder, k=5)}
            for p in places
        )
    # Chance is 5/24 (about 21%); the trained default must do far better on full descriptions.
    assert top5 / len(places) >= 0.6, f"only {top5}/{len(places)} places in the top 5"


def test_rebuild_adds_nothing_and_info_reports_counts(city: Path) -> None:
    out = run("map", "build", city, "--map", city / "map").stdout
    assert "added 0 images, 48 already present" in out
    info = run("map", "info", "--map", city / "map").stdout
    assert "places:     24" in info and "images:     48" in info


def test_map_built_with_a_relative_checkpoint_answers_from_another_directory(
    city: Path, tmp_path: Path
) -> None:
    """Issue 13, finding 7: `--checkpoint heads.safetensors` typed in the build directory
    used to be recorded as typed, so a query (or a node) started elsewhere failed with
    "No such file or directory: heads.safetensors"."""
    from dlgpr_core.encoders.factory import DEFAULT_CHECKPOINT

    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    shutil.copy(DEFAULT_CHECKPOINT, work / "heads.safetensors")
    assert DLGPR
    built = subprocess.run(
        [DLGPR, "map", "build", str(city), "--map", str(tmp_path / "map"), "--checkpoint",
         "heads.safetensors", "--evidence", "none"],
        cwd=work, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    query = subprocess.run(
        [DLGPR, "map", "query", "a bank", "--map", str(tmp_path / "map"), "--json"],
        cwd=other, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr[-3000:]
    assert json.loads(query.stdout)[0]["place_id"].startswith("Clitown:")


def test_search_eval_measures_each_channel_combination(city: Path, tmp_path: Path) -> None:
    """`dlgpr retriever search-eval` as a user runs it: builds and annotates the city's map
    (learned evidence, the shipped model), records the lexical channel's default, and writes
    place and image R@k per channel combination and wording."""
    maps, out = tmp_path / "maps", tmp_path / "search"
    run(
        "retriever", "search-eval", "--data", city, "--cities", "Clitown", "--maps", maps,
        "--n", "8", "--variants", "generator,caption", "--rows", "dense,dense+lexical+evidence",
        "--out", out,
    )  # fmt: skip
    table = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["encoder"], r["variant"]): r for r in table["rows"]}
    assert set(rows) == {
        (c, v) for c in ("dense", "dense+lexical+evidence") for v in ("generator", "caption")
    }
    for r in rows.values():
        assert r["n_queries"] == 8 and r["n_images"] == 48
        for recall in (r["place_recall"], r["image_recall"]):
            assert list(recall) == ["R@1", "R@5", "R@10"]
            assert 0.0 <= recall["R@1"] <= recall["R@5"] <= recall["R@10"] <= 1.0
    assert table["meta"]["lexical"]["Clitown"]["annotator"] == "learned"
    info = run("map", "info", "--map", maps / "Clitown").stdout
    assert "BM25 over the words of 'learned' evidence" in " ".join(info.split())
    md = out.with_suffix(".md").read_text()
    assert "dense+lexical+evidence" in md and "caption" in md


def test_missing_map_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("map", "query", "a bank", "--map", tmp_path / "nowhere", ok=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_map_of_another_encoder_is_refused(city: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from dlgpr_core.encoders.factory import DEFAULT_CHECKPOINT

    heads = load_file(str(DEFAULT_CHECKPOINT))
    other = tmp_path / "other_heads.safetensors"
    save_file({k: v * 1.5 for k, v in heads.items()}, str(other))
    proc = run("map", "query", "a bank", "--map", city / "map", "--checkpoint", other, ok=False)
    assert proc.returncode == 2
    assert "rebuild the map or pass the matching encoder" in proc.stderr


def test_demo_runs_a_full_dialogue_through_the_node_graph(tmp_path: Path) -> None:
    """`make demo`'s command on a small city: generates it, builds the map, brings the ROS 2
    graph up and prints a simulated dialogue to its end with the place and position."""
    proc = run("demo", "--workdir", tmp_path / "demo", "--places", "12", "--dialogues", "1")
    out = proc.stdout
    assert "a person standing at Demoville:" in out
    assert "Person:" in out and "Localized:" in out and " lat " in out
    assert re.search(r"\b[01] of 1 places found", out), out[-2000:]
    bad = run("demo", "--workdir", tmp_path / "demo", "--user", "telepathy", ok=False)
    assert bad.returncode == 2 and "--user" in bad.stderr

    # A person typing: the description starts a dialogue, the robot asks, Ctrl-D ends it.
    assert DLGPR
    typed = subprocess.Popen(
        [DLGPR, "demo", "--workdir", str(tmp_path / "demo"), "--user", "typed"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert typed.stdin is not None
    time.sleep(15)  # the graph is up and its peers discovered
    typed.stdin.write("I see a bakery with a fountain beside it.\n")
    typed.stdin.flush()
    time.sleep(5)
    out, err = typed.communicate(timeout=120)  # closes stdin: Ctrl-D
    assert typed.returncode == 0, err[-3000:]
    assert "Person: I see a bakery with a fountain beside it." in out, out[-3000:]
    assert "Robot:" in out


def test_bringup_help_lists_its_options() -> None:
    out = run("bringup", "--help").stdout
    for option in ("--map", "--input", "--simulate", "--record", "--set"):
        assert option in out
