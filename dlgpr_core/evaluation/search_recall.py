"""Static recall of the robot's whole search (dense, lexical, evidence), channel by channel.

`dlgpr retriever eval` measures an encoder alone over embeddings; this measures what the
robot really ranks with a map (`dialogue.search.RobotSearch`): the same queries (the
generator's description, a person's rephrasing, with speech-recognition errors, the vague
caption; `synth.rephrase`, evaluation only), the same two recalls, for each combination of
channels, so the gain of each is visible:

* place R@k: the target among the k best places of the whole map;
* image R@k: an image of the target among the k best images, each image scored by its
  cosine plus its place's gain (the place's score from the search minus its best image's
  cosine, `place_gains`), so the search moves a place's images together and each place's
  best image scores what the search gave the place.

Ties count against the target in both (a rank is the number of others scoring at least as
high). Everything here reads the map and its evidence only; the annotations give the
queries and the targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.search import RobotSearch
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.retriever.static_eval import KS, RECALL_LEGEND, EvalRow, EvalTable
from dlgpr_core.synth.rephrase import make_eval_queries

LEGEND = (
    "Channels: dense = the map's encoder (each place by its best image); lexical = BM25 over "
    "the words of each place's evidence phrases; evidence = the query read as observations, "
    "each place re-scored by their likelihood under its image evidence. Place R@k over the "
    "whole map; image R@k: images scored by cosine plus their place's gain (its score from the "
    "search minus its best image's cosine). Ties count against the target. In %."
)


def pessimistic_rank(scores: Mapping[str, float], target: str) -> int:
    """0-based rank of `target`: how many others score at least as high (absent: last)."""
    t = scores.get(target)
    if t is None:
        return len(scores)
    return sum(1 for key, s in scores.items() if key != target and s >= t)


def image_rank(
    image_scores: Sequence[tuple[str, float]], gains: Mapping[str, float], target: str
) -> int:
    """0-based rank of the target's best image among all images, each image's score shifted
    by its place's gain; ties against the target."""
    shifted = [(pid, s + gains.get(pid, 0.0)) for pid, s in image_scores]
    best = max((s for pid, s in shifted if pid == target), default=None)
    if best is None:
        return len(shifted)
    return sum(1 for pid, s in shifted if pid != target and s >= best)


def place_gains(
    image_scores: Sequence[tuple[str, float]], fused: Mapping[str, float]
) -> dict[str, float]:
    """How far the search moved each place from its best image's cosine: shifted by it, a
    place's best image scores exactly what the search gave the place. For an encoder whose
    place score is its best image's cosine (dlgpr-lite) that is what the other channels
    added; a fine re-ranking encoder (CMPL) scores places by cosine + fine similarity, and
    that part moves the place's images too, so images and places are ranked alike."""
    best: dict[str, float] = {}
    for pid, s in image_scores:
        if s > best.get(pid, -np.inf):
            best[pid] = s
    return {pid: score - best[pid] for pid, score in fused.items() if pid in best}


def _recall(ranks: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    r = np.asarray(ranks)
    return {f"R@{k}": float((r < k).mean()) if len(r) else 0.0 for k in ks}


def search_recall(
    db: MapDatabase,
    encoder: Encoder,
    searches: Mapping[str, RobotSearch],
    places: Sequence[PlaceAnnotation],
    variants: Sequence[str],
    *,
    seed: int = 0,
    ks: Sequence[int] = KS,
    progress: bool = False,
) -> list[EvalRow]:
    """One `EvalRow` per search (label -> `RobotSearch`) and query variant over one map
    (`progress`: a bar over the queries, which take seconds each on a robot CPU)."""
    n_places = db.info().n_places
    n_images = db.info().n_images
    city = places[0].city if places else ""
    queries = make_eval_queries(places, seed, variants=variants)
    place_ranks: dict[tuple[str, str], list[int]] = {}
    image_ranks: dict[tuple[str, str], list[int]] = {}
    for q in tqdm(queries, desc=f"queries {city}", unit="q", disable=not progress):
        images = [(h.place_id, h.score) for h in db.search_images(q.text, encoder, k=n_images)]
        for label, search in searches.items():
            fused = {h.place_id: h.score for h in search(q.text, n_places)}
            gains = place_gains(images, fused)
            key = (label, q.variant)
            place_ranks.setdefault(key, []).append(pessimistic_rank(fused, q.place_id))
            image_ranks.setdefault(key, []).append(image_rank(images, gains, q.place_id))
    rows = []
    for label in searches:
        for variant in variants:
            key = (label, variant)
            rows.append(
                EvalRow(
                    label,
                    city,
                    variant,
                    len(place_ranks.get(key, [])),
                    n_images,
                    place_recall=_recall(place_ranks.get(key, []), ks),
                    image_recall=_recall(image_ranks.get(key, []), ks),
                )
            )
    return rows


def write_table(
    rows: Sequence[EvalRow], out: Path, meta: Mapping[str, object]
) -> tuple[Path, Path]:
    """``<out>.md`` (with the channels' legend) and ``<out>.json``."""
    table = EvalTable(rows=list(rows), meta=dict(meta, legend=LEGEND))
    md, js = table.write(out, first_column="channels")
    text = table.to_markdown("channels").replace(RECALL_LEGEND, LEGEND)
    md.write_text(text, encoding="utf-8")
    return md, js
