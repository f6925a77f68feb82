"""Map build on 2 local Ray workers against one process, on the same SynthCities images.

Generates a city (400 images by default, plus a corrupt image and a duplicate so that the
refusals are compared too), then runs the two commands a user runs, as subprocesses, each
into its own map:

    dlgpr map build CITY --map local                                 # one process
    dlgpr map build CITY --map ray --ray local --workers 2           # Ray Data, 2 workers
    OMP_NUM_THREADS=1 dlgpr map build CITY --map local1              # one process, 1 thread

all with the default encoder (dlgpr-lite) and the default evidence annotator (learned). The
third is the one process on one thread, as each Ray worker runs: on busy shared cores two
intra-op threads lose time waiting for each other, which the two single-threaded workers
do not, so it tells what the second process adds from what threading loses.
Reports the wall time of each command (Ray's includes starting the cluster and loading the
encoder and annotator on each worker), the speed-up, and whether the two maps are the same:
image ids and rows, vectors (largest difference), evidence (phrases, largest confidence
difference) and refused inputs.

Run: ``python benchmarks/bench_build_ray.py --out docs/results/build_ray``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dlgpr_core.mapdb.index import EXACT_FILE, ExactIndex

DLGPR = shutil.which("dlgpr") or "dlgpr"


def run(args: list[str], log: Path, **env_vars: str) -> float:
    """Seconds the command took; its output goes to ``log``, a failure stops the benchmark."""
    start = time.perf_counter()
    with log.open("w") as out:
        env = {**os.environ, "COLUMNS": "400", **env_vars}  # lines unwrapped, for `phases`
        proc = subprocess.run(
            [DLGPR, *args], stdout=out, stderr=subprocess.STDOUT, check=False, env=env
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`dlgpr {' '.join(args)}` failed; see {log}:\n{log.read_text()[-3000:]}")
    return seconds


def phases(log: Path) -> dict[str, float]:
    """Seconds of the encode and evidence phases, from the command's own report lines."""
    text = log.read_text()
    found: dict[str, float] = {}
    for key, pattern in (
        ("encode_s", r"added \d+ images, .* in ([\d.]+) s"),
        ("evidence_s", r"evidence \S+ \(.*\): \d+ images annotated, .* in ([\d.]+) s"),
        ("ray_total_s", r"built on \d+ Ray workers .* in ([\d.]+) s"),
    ):
        match = re.search(pattern, text)
        if match:
            found[key] = float(match.group(1))
    return found


def add_bad_inputs(root: Path, city: str) -> None:
    """A corrupt image and a byte-for-byte duplicate, listed like any other view."""
    table = root / "Dataframes" / f"{city}.csv"
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    first = rows[0]
    original = next((root / "Images" / city).glob(f"*_{first['panoid']}.jpg"))
    for panoid, data in (
        ("BENCHcorruptXXXXXXXXXX", b"not a jpeg at all"),
        ("BENCHduplicateXXXXXXXX", original.read_bytes()),
    ):
        (original.parent / original.name.replace(first["panoid"], panoid)).write_bytes(data)
        rows.append({**first, "panoid": panoid})
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(first))
        writer.writeheader()
        writer.writerows(rows)


def contents(map_dir: Path, dim: int) -> dict[str, Any]:
    with sqlite3.connect(map_dir / "map.sqlite") as conn:
        out: dict[str, Any] = {
            "images": conn.execute(
                "SELECT id, path, sha256, place_id FROM images ORDER BY id"
            ).fetchall(),
            "evidence": conn.execute(
                "SELECT image_id, annotator, phrase, category, attribute, value, confidence "
                "FROM evidence ORDER BY image_id, annotator, phrase, category, attribute, value"
            ).fetchall(),
            "skipped": conn.execute("SELECT source, reason FROM skipped ORDER BY id").fetchall(),
        }
    conn.close()
    exact = ExactIndex.load(map_dir / EXACT_FILE, dim)
    order = np.argsort(exact.ids())
    out["ids"] = exact.ids()[order].tolist()
    out["vectors"] = exact.vectors()[order]
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    same_rows = a["images"] == b["images"] and a["ids"] == b["ids"]
    vec_diff = (
        float(np.abs(a["vectors"] - b["vectors"]).max())
        if a["vectors"].shape == b["vectors"].shape
        else float("inf")
    )
    conf_a = {row[:-1]: row[-1] for row in a["evidence"]}
    conf_b = {row[:-1]: row[-1] for row in b["evidence"]}
    common = conf_a.keys() & conf_b.keys()
    return {
        "images": len(a["images"]),
        "same_ids_and_rows": same_rows,
        "max_vector_difference": vec_diff,
        "evidence_items": [len(conf_a), len(conf_b)],
        "evidence_items_in_one_only": len(conf_a.keys() ^ conf_b.keys()),
        "max_confidence_difference": max((abs(conf_a[k] - conf_b[k]) for k in common), default=0.0),
        "refused": [len(a["skipped"]), len(b["skipped"])],
        "same_refusals": a["skipped"] == b["skipped"],
    }


def markdown(r: dict[str, Any]) -> str:
    c, t = r["comparison"], r["comparison_one_thread"]

    def pair(key: str) -> str:
        return f"{c[key][0]}, {c[key][1]}"

    return "\n".join(
        [
            "# Map build: 2 local Ray workers against one process",
            "",
            f"`{r['command']}`, {r['date']}, {r['machine']}; {r['images']} SynthCities images "
            f"(+ a corrupt image and a duplicate), encoder dlgpr-lite, evidence learned. One "
            f"run; load average {r['load_average'][0]} at the start, {r['load_average'][1]} at "
            "the end (other developers' jobs share the cores).",
            "",
            "| build | command | wall time (s) | images/s |",
            "|---|---|---:|---:|",
            f"| one process | `{r['local_command']}` | {r['local_s']:.1f} | "
            f"{r['images'] / r['local_s']:.2f} |",
            f"| one process, one thread | `{r['one_thread_command']}` | {r['one_thread_s']:.1f} "
            f"| {r['images'] / r['one_thread_s']:.2f} |",
            f"| Ray, 2 local workers | `{r['ray_command']}` | {r['ray_s']:.1f} | "
            f"{r['images'] / r['ray_s']:.2f} |",
            "",
            f"Speed-up (one process / Ray): **{r['speedup']:.2f}x**; against one process on "
            f"one thread, as each worker runs: **{r['speedup_vs_one_thread']:.2f}x**.",
            "",
            "Phases, from each command's own report (s): one process encodes "
            f"{_get(r['local_phases'], 'encode_s')} then annotates "
            f"{_get(r['local_phases'], 'evidence_s')} (reading every image a second time; on "
            f"one thread {_get(r['one_thread_phases'], 'encode_s')} and "
            f"{_get(r['one_thread_phases'], 'evidence_s')}); "
            f"Ray's build pass (decode + encode + annotate on the workers) takes "
            f"{_get(r['ray_phases'], 'encode_s')}, the whole Ray build "
            f"{_get(r['ray_phases'], 'ray_total_s')} (the rest of the wall time: starting "
            "Python, the cluster, and the encoder and annotator in this process and on "
            "each worker).",
            "",
            "| the maps | one process vs Ray | one process: 2 threads vs 1 |",
            "|---|---|---|",
            f"| images stored | {c['images']} | {t['images']} |",
            f"| same ids, paths, hashes, places | {c['same_ids_and_rows']} | "
            f"{t['same_ids_and_rows']} |",
            f"| largest vector difference | {c['max_vector_difference']:.2e} | "
            f"{t['max_vector_difference']:.2e} |",
            f"| evidence items | {pair('evidence_items')} | "
            f"{t['evidence_items'][0]}, {t['evidence_items'][1]} |",
            f"| evidence items in one map only | {c['evidence_items_in_one_only']} | "
            f"{t['evidence_items_in_one_only']} |",
            f"| largest confidence difference (common items) | "
            f"{c['max_confidence_difference']:.2e} | {t['max_confidence_difference']:.2e} |",
            f"| refused inputs | {pair('refused')} | {t['refused'][0]}, {t['refused'][1]} |",
            f"| same refusals and reasons | {c['same_refusals']} | {t['same_refusals']} |",
            "",
            "Evidence items in one map only are confidences at the learned annotator's "
            "decoding thresholds (presence floor, decode rules) that float-level differences "
            "(batch composition, thread count) move across them; the right-hand column shows "
            "the same between two local builds that differ only in threads.",
            "",
        ]
    )


def _get(found: dict[str, float], key: str) -> str:
    return f"{found[key]:.1f}" if key in found else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=100)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--evidence", default="learned")
    parser.add_argument("--out", type=Path, help="Write OUT.json and OUT.md.")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        city = root / "city"
        run(["synth", str(city), "--city", "Raytown", "--places", str(args.places), "--views",
             str(args.views), "--seed", "3"], root / "synth.log")  # fmt: skip
        add_bad_inputs(city, "Raytown")
        common = ["--evidence", args.evidence]
        local_args = ["map", "build", str(city), "--map", str(root / "local"), *common]
        ray_args = ["map", "build", str(city), "--map", str(root / "ray"), *common,
                    "--ray", "local", "--workers", str(args.workers)]  # fmt: skip
        local_s = run(local_args, root / "local.log")
        ray_s = run(ray_args, root / "ray.log")
        # One process again with one thread, as each Ray worker runs (Ray sets
        # OMP_NUM_THREADS=1 for a 1-CPU actor): separates what Ray's two processes gain
        # from what two intra-op threads lose to each other on busy shared cores.
        one_args = [*local_args[:4], str(root / "local1"), *local_args[5:]]
        one_s = run(one_args, root / "local1.log", OMP_NUM_THREADS="1")
        print((root / "ray.log").read_text()[-2500:])
        local_phases, ray_phases = phases(root / "local.log"), phases(root / "ray.log")
        one_phases = phases(root / "local1.log")
        local = contents(root / "local", 256)
        comparison = compare(local, contents(root / "ray", 256))
        threads_only = compare(local, contents(root / "local1", 256))

    def shown(argv: list[str]) -> str:
        return "dlgpr " + " ".join(a.replace(tmp, "$TMP") for a in argv)

    result = {
        "command": "python benchmarks/bench_build_ray.py "
        + f"--places {args.places} --views {args.views} --workers {args.workers}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} shared CPU cores, no GPU",
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "images": args.places * args.views,
        "local_command": shown(local_args),
        "ray_command": shown(ray_args),
        "local_s": round(local_s, 2),
        "ray_s": round(ray_s, 2),
        "speedup": round(local_s / ray_s, 3),
        "one_thread_command": "OMP_NUM_THREADS=1 " + shown(one_args),
        "one_thread_s": round(one_s, 2),
        "speedup_vs_one_thread": round(one_s / ray_s, 3),
        "one_thread_phases": one_phases,
        "local_phases": local_phases,
        "ray_phases": ray_phases,
        "comparison": comparison,
        "comparison_one_thread": threads_only,
    }
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
