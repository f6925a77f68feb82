"""Train (or evaluate) the dlgpr-lite projection heads on SynthCities.

Train:     python training/align_towers.py --data data/synth --city Trainville \
               --out heads.safetensors
Evaluate:  python training/align_towers.py --data data/synth --eval-only --eval-city Testburg \
               --checkpoint dlgpr_core/assets/dlgpr_lite_heads.safetensors --baseline
The evaluation runs the full encoder (images and texts through both towers), not the cached
features, so its numbers are what the map database will see. Without --eval-city it scores
the validation city Valburg (SynthCities, 300 places, seed 3): compare settings (epochs,
text kinds...) there, and score the held-out Testburg only once they are fixed, so its
number is never a selected one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlgpr_core.data.text_augment import TextAugmentConfig
from dlgpr_core.encoders.align import TEXT_KINDS, AlignConfig, load_places, run_alignment
from dlgpr_core.encoders.evaluate import text_to_place_recall
from dlgpr_core.encoders.factory import DEFAULT_CHECKPOINT, DEFAULT_CONFIG
from dlgpr_core.encoders.open_clip_encoder import OpenClipEncoder

VALIDATION_CITY = "Valburg"
"""Where settings are compared; Testburg, the test city, is scored only for the final number."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, required=True, help="SynthCities root")
    ap.add_argument("--city", action="append", default=[], help="training city (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="checkpoint to write (.safetensors)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="JSON model config")
    ap.add_argument("--epochs", type=int, default=AlignConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=AlignConfig.batch_size)
    ap.add_argument("--lr", type=float, default=AlignConfig.lr)
    ap.add_argument("--seed", type=int, default=AlignConfig.seed)
    ap.add_argument(
        "--text-kinds",
        default=",".join(AlignConfig.text_kinds),
        help=f"positives, comma separated, of {TEXT_KINDS}",
    )
    ap.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="N",
        help="N text-augmentation variants per place (dlgpr_core.data.text_augment: partial, "
        "shuffled and dropped descriptions, answers, negations, dialogues) as the "
        "'augmented' text kind, added to --text-kinds; 0 = off",
    )
    ap.add_argument("--augment-seed", type=int, default=0)
    ap.add_argument("--max-places", type=int, default=None)
    ap.add_argument(
        "--eval-city",
        action="append",
        default=None,
        help=f"city to score (repeatable; default {VALIDATION_CITY}, the validation city; "
        "score the test city Testburg only for the final number)",
    )
    ap.add_argument("--eval-only", action="store_true", help="skip training, score --checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--baseline", action="store_true", help="also score untrained random heads")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if args.eval_city is None:  # argparse's append would add to a non-empty default
        args.eval_city = [VALIDATION_CITY]
    return args


def text_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    kinds = [k for k in args.text_kinds.split(",") if k]
    if args.augment and "augmented" not in kinds:
        kinds.append("augmented")
    return tuple(kinds)


def evaluate(
    enc: OpenClipEncoder, data: Path, city: str, max_places: int | None
) -> dict[str, dict[str, float]]:
    places = load_places(data, city, max_places)
    images = {p.place_id: p.images for p in places}
    out = {}
    for kind in ("description", "caption"):
        queries = [(p.place_id, p.texts[kind][0]) for p in places]
        out[kind] = text_to_place_recall(enc, images, queries)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    results: dict[str, object] = {}
    checkpoint = args.checkpoint
    if not args.eval_only:
        if not args.city or args.out is None:
            sys.exit("training needs --city and --out (or pass --eval-only)")
        cfg = AlignConfig(
            data_root=args.data,
            cities=args.city,
            out=args.out,
            model_config=args.config,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            text_kinds=text_kinds(args),
            augment=TextAugmentConfig(variants_per_place=args.augment) if args.augment else None,
            augment_seed=args.augment_seed,
            max_places=args.max_places,
            device=args.device,
        )
        results["training"] = run_alignment(cfg)
        checkpoint = args.out
    for city in args.eval_city:
        t0 = time.perf_counter()
        enc = OpenClipEncoder.from_config(args.config, checkpoint=checkpoint, device=args.device)
        results[f"{city}/trained"] = evaluate(enc, args.data, city, args.max_places)
        if args.baseline:
            from dlgpr_core.encoders.align import reset_heads

            base = OpenClipEncoder.from_config(args.config, allow_random=True, device=args.device)
            reset_heads(base.model, args.seed)
            results[f"{city}/random_heads"] = evaluate(base, args.data, city, args.max_places)
        logging.info("evaluated %s in %.0fs", city, time.perf_counter() - t0)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
