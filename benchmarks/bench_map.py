"""What the map database costs on top of the encoder, measured in one run.

Reports ratios, not absolute times (these machines are noisy):
- build throughput (images/s, including JPEG decoding, hashing, SQLite, FAISS) against the
  encoder's raw batched forward on the same already-decoded images;
- query latency (text encoding + FAISS search + grouping by place) against the encoder's
  single-text forward.

Run: ``make bench`` (or ``python benchmarks/bench_map.py --places 100``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from dlgpr_core.data import scan_dataset
from dlgpr_core.data.annotations import read_annotations
from dlgpr_core.encoders.factory import create_encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.synth import generate_city


def _median_seconds(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=100)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--encoder", default="dlgpr-lite")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_city(root, "Benchtown", args.places, args.views, seed=3, progress=False)
        encoder = create_encoder(args.encoder)
        scan = scan_dataset(root, fmt="gsv")
        images = [Image.open(root / r.path).convert("RGB") for r in scan.records]
        n = len(images)

        encoder.encode_images(images[: args.batch_size])  # warm-up (lazy init, allocator)
        start = time.perf_counter()
        for i in range(0, n, args.batch_size):
            encoder.encode_images(images[i : i + args.batch_size])
        raw_ips = n / (time.perf_counter() - start)

        db = MapDatabase.create(root / "map", encoder.fingerprint, encoder.dim)
        report = db.build(scan, encoder, batch_size=args.batch_size, progress=False)
        build_ips = report.added / report.seconds

        texts = [p.description for p in read_annotations(root / "Annotations" / "Benchtown.jsonl")]
        texts = (texts * (args.queries // max(1, len(texts)) + 1))[: args.queries]
        db.search(texts[0], encoder, k=5)  # warm-up
        it = iter(texts * 2)
        text_s = _median_seconds(lambda: encoder.encode_texts([next(it)]), args.queries)
        it = iter(texts * 2)
        query_s = _median_seconds(lambda: db.search(next(it), encoder, k=5), args.queries)

    figures = {
        "images": n,
        "encoder_raw_images_per_s": round(raw_ips, 2),
        "map_build_images_per_s": round(build_ips, 2),
        "build_over_raw": round(build_ips / raw_ips, 3),
        "text_forward_ms": round(text_s * 1e3, 2),
        "map_query_ms": round(query_s * 1e3, 2),
        "query_over_text_forward": round(query_s / text_s, 3),
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
