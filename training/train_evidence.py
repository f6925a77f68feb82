"""Train the learned evidence heads (the offline default annotator), or score an annotator.

Train (writes the run directory; with write_assets=dlgpr_core/assets also the shipped files):
    python training/train_evidence.py --config training/configs/evidence_lite.yaml [key=value ...]
Score a trained annotator on a city through a real map (build with dlgpr-lite, annotate,
compare with the city's annotations); use the held-out city only for final numbers:
    python training/train_evidence.py --evaluate Testburg --data data/synth \
        --map runs/evidence_maps/Testburg --annotator "" --out docs/results/evidence_quality_learned
(``--annotator ""`` = the shipped assets, else a run directory; ``--spec zero-shot`` or any
other annotator spec scores that annotator instead.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlgpr_core.config import ConfigError
from dlgpr_core.evidence.learned.config import EvidenceTrainConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=None, help="YAML training config")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ap.add_argument("--evaluate", metavar="CITY", default=None, help="score instead of train")
    ap.add_argument("--data", type=Path, default=Path("data/synth"), help="(--evaluate) root")
    ap.add_argument("--map", type=Path, default=None, help="(--evaluate) map directory")
    ap.add_argument("--annotator", default="", help="(--evaluate) run dir; '' = shipped")
    ap.add_argument(
        "--spec",
        default=None,
        help="(--evaluate) score another annotator instead, by its spec (zero-shot, ocr, ...)",
    )
    ap.add_argument("--out", type=Path, default=None, help="(--evaluate) table path stem")
    ap.add_argument("--batch-size", type=int, default=16, help="(--evaluate) annotation batch")
    return ap.parse_args(argv)


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "training/train_evidence.py", *args])


def train_main(args: argparse.Namespace, command: str) -> int:
    from dlgpr_core.evidence.learned.train import train, validation_evidence

    try:
        config = EvidenceTrainConfig.from_yaml(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    result = train(config, command=command)
    print(
        json.dumps(
            {
                "best_epoch": result.best_epoch,
                "validation": result.validation,
                "seconds": round(result.seconds, 1),
            },
            indent=2,
        )
    )
    # The per-type evidence table on the validation city, from the cached features (the
    # annotator's decode path, without re-running the trunk).
    from dlgpr_core.data.annotations import places_by_id, read_annotations
    from dlgpr_core.evaluation.evidence_quality import evidence_quality

    for city, evidence in validation_evidence(config, result.run_dir).items():
        places = places_by_id(read_annotations(config.data_root / "Annotations" / f"{city}.jsonl"))
        table = evidence_quality(evidence, places, meta={"city": city, "command": command})
        md, _ = table.write(result.run_dir / f"evidence_quality_{city}")
        print(md.read_text(encoding="utf-8"))
    return 0


def throughput(annotator: Any, data: Path, city: str, n: int = 64) -> float:
    """Images per second of `annotator.annotate` on `n` decoded images of `city` (after one
    warm-up batch): the model alone, without JPEG decoding or the map's bookkeeping."""
    from PIL import Image

    paths = sorted((data / "Images" / city).glob("*.jpg"))[:n]
    images = [Image.open(p).convert("RGB") for p in paths]
    annotator.annotate(images[: getattr(annotator, "batch_size", 16)])
    t0 = time.perf_counter()
    annotator.annotate(images)
    return len(images) / (time.perf_counter() - t0)


def evaluate_main(args: argparse.Namespace, command: str) -> int:
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.data.annotations import places_by_id, read_annotations
    from dlgpr_core.encoders.factory import create_encoder
    from dlgpr_core.evaluation.evidence_quality import map_evidence_quality
    from dlgpr_core.evidence.learned import create_learned_annotator
    from dlgpr_core.mapdb.database import MapDatabase

    city = args.evaluate
    map_dir = args.map or Path("runs/evidence_maps") / city
    encoder = create_encoder("dlgpr-lite")
    db = MapDatabase.open_or_create(map_dir, encoder)
    try:
        built = db.build(scan_dataset(args.data, fmt="gsv", cities=[city]), encoder)
        print(built.render())
        annotator: Any
        if args.spec:
            from dlgpr_core.evidence.registry import make_annotator

            annotator = make_annotator(args.spec, encoder)
        else:
            annotator = create_learned_annotator(args.annotator, batch_size=args.batch_size)
        rate = throughput(annotator, args.data, city)
        print(f"annotator throughput: {rate:.1f} images/s (in memory, batch {args.batch_size})")
        t0 = time.perf_counter()
        report = db.annotate(annotator, batch_size=args.batch_size)
        print(report.render())
        places = places_by_id(read_annotations(args.data / "Annotations" / f"{city}.jsonl"))
        meta = {
            "city": city,
            "command": command,
            "annotator_version": annotator.version,
            "annotate_seconds": round(time.perf_counter() - t0, 1),
            "images_per_second_in_memory": round(rate, 2),
            "torch_threads": torch.get_num_threads(),
            "annotate_report": report.render(),
            "training": getattr(annotator, "meta", {}).get("training", {}),
        }
        table = map_evidence_quality(db, annotator.name, places, meta=meta)
    finally:
        db.close()
    out = args.out or map_dir / "evidence_quality"
    md, js = table.write(out)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {js}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = command_line(argv)
    if args.evaluate:
        return evaluate_main(args, command)
    return train_main(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
