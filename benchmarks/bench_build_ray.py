"""Map build on 2 local Ray workers against one process, on the same SynthCities images.

Generates a city (400 images by default, plus a corrupt image and a duplicate so that the
refusals are compared too), then runs the two commands a user runs, as subprocesses, each
into its own map:

    dlgpr map build CITY --map local                                 # one process
    dlgpr map build CITY --map ray --ray local --workers 2           # Ray Data, 2 workers

both with the default encoder (dlgpr-lite) and the default evidence annotator (learned).
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


def run(args: list[str], log: Path) -> float:
    """Seconds the command took; its output goes to ``log``, a failure stops the benchmark."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([DLGPR, *args], stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`dlgpr {' '.join(args)}` failed; see {log}:\n{log.read_text()[-3000:]}")
    return seconds


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
    keys_a = [row[:-1] for row in a["evidence"]]
    keys_b = [row[:-1] for row in b["evidence"]]
    conf_diff = (
        max((abs(x[-1] - y[-1]) for x, y in zip(a["evidence"], b["evidence"], strict=True)),
            default=0.0)
        if keys_a == keys_b
        else float("inf")
    )  # fmt: skip
    return {
        "images": len(a["images"]),
        "same_ids_and_rows": same_rows,
        "max_vector_difference": vec_diff,
        "evidence_items": [len(keys_a), len(keys_b)],
        "same_evidence_items": keys_a == keys_b,
        "max_confidence_difference": conf_diff,
        "refused": [len(a["skipped"]), len(b["skipped"])],
        "same_refusals": a["skipped"] == b["skipped"],
    }


def markdown(r: dict[str, Any]) -> str:
    c = r["comparison"]
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
            f"| Ray, 2 local workers | `{r['ray_command']}` | {r['ray_s']:.1f} | "
            f"{r['images'] / r['ray_s']:.2f} |",
            "",
            f"Speed-up (one process / Ray): **{r['speedup']:.2f}x**.",
            "",
            "| the two maps | |",
            "|---|---|",
            f"| images stored | {c['images']} |",
            f"| same ids, paths, hashes, places | {c['same_ids_and_rows']} |",
            f"| largest vector difference | {c['max_vector_difference']:.2e} |",
            f"| evidence items (local, Ray) | {c['evidence_items'][0]}, {c['evidence_items'][1]} |",
            f"| same evidence items | {c['same_evidence_items']} |",
            f"| largest evidence confidence difference | {c['max_confidence_difference']:.2e} |",
            f"| refused inputs (local, Ray) | {c['refused'][0]}, {c['refused'][1]} |",
            f"| same refusals and reasons | {c['same_refusals']} |",
            "",
        ]
    )


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
        print((root / "ray.log").read_text()[-2500:])
        comparison = compare(contents(root / "local", 256), contents(root / "ray", 256))

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
        "comparison": comparison,
    }
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
