"""Static text -> place retrieval tables: the paper's Table 2 protocol and Table 3 ablation.

Protocol: per city, the gallery is every image of every place of that city; a query is one
text per place and wording variant (``generator`` = the full fine-grained description, the
paper's query; the others come from `synth.rephrase.make_eval_queries`). Two recalls per
row, from one ranking, because they answer different questions:

* **place R@k**: the target place is among the k best distinct places, each place scored
  by its best image (what the robot localising itself needs; the count training validates
  with, `encoders.evaluate.place_recall_from_embeddings`);
* **image R@k**: an image of the target place is among the k best images (the paper's
  Table 2 counts images). Never above place R@k.

Ties count against the target in both. FineEncoders (CMPL) re-rank each query's top-N images
with their fine score, as a map search does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dlgpr_core.data.annotations import read_annotations
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.encoders.base import Encoder, FineEncoder
from dlgpr_core.encoders.evaluate import Rerank, _load, recall_from_embeddings
from dlgpr_core.synth.rephrase import make_eval_queries

from .data import _annotation_file, read_places

KS = (1, 5, 10)
RECALL_LEGEND = (
    "place R@k: the target place is among the k best distinct places (each scored by its "
    "best image); image R@k: an image of the target place is among the k best images (the "
    "paper's Table 2). Ties count against the target. In %."
)
ABLATION_ROWS = ("baseline", "vpr_tokensel", "hsdm", "hi", "full")
"""Table 3 rows in the paper's order; each is ``<config dir>/<row>.yaml``."""


@dataclass
class EvalRow:
    """One encoder x city x query variant; recalls are fractions keyed ``"R@k"``."""

    encoder: str
    city: str
    variant: str
    n_queries: int
    n_images: int
    place_recall: dict[str, float]
    """Target place among the k best distinct places (ranked by their best image)."""
    image_recall: dict[str, float]
    """An image of the target place among the k best images (the paper's Table 2)."""


@dataclass
class EvalTable:
    rows: list[EvalRow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self, first_column: str = "encoder") -> str:
        """Place R@k columns, then image R@k columns, in percent; the two are labelled
        because they differ (image R@k <= place R@k) and a bare "R@k" would not say which."""
        ks = list(self.rows[0].place_recall) if self.rows else [f"R@{k}" for k in KS]
        head = [first_column, "city", "variant", "queries", "images"]
        head += [f"place {k}" for k in ks] + [f"image {k}" for k in ks]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.encoder, r.city, r.variant, str(r.n_queries), str(r.n_images)]
            cells += [f"{100 * r.place_recall[k]:.1f}" for k in ks]
            cells += [f"{100 * r.image_recall[k]:.1f}" for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + RECALL_LEGEND + "\n"

    def write(self, out: str | Path, first_column: str = "encoder") -> tuple[Path, Path]:
        """``<out>.md`` (R@k in percent) and ``<out>.json`` (fractions, plus `meta`)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        md, js = out.with_name(out.name + ".md"), out.with_name(out.name + ".json")
        md.write_text(self.to_markdown(first_column), encoding="utf-8")
        payload = {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}
        js.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return md, js


def _city_gallery(
    root: Path, city: str, max_places: int | None
) -> tuple[list[Path], list[str], list[Any]]:
    """Image paths, their namespaced place ids, and the annotations of places with images."""
    places = read_places(root, [city], max_places)
    paths = [im for p in places for im in p.images]
    labels = [namespaced_place_id(p.city, p.place_id) for p in places for _ in p.images]
    have = set(labels)
    anns = [
        a
        for a in read_annotations(_annotation_file(root, city))
        if namespaced_place_id(a.city, a.place_id) in have
    ]
    return paths, labels, anns


def _encode_gallery(
    encoder: Encoder, paths: Sequence[Path], batch: int
) -> tuple[np.ndarray, np.ndarray | None]:
    glob: list[np.ndarray] = [np.zeros((0, encoder.dim), np.float32)]
    fine: list[np.ndarray] = []
    for s in range(0, len(paths), batch):
        images = [_load(p) for p in paths[s : s + batch]]
        if isinstance(encoder, FineEncoder):
            g, f = encoder.encode_images_with_fine(images)
            fine.append(np.asarray(f, dtype=np.float16))
        else:
            g = encoder.encode_images(images)
        glob.append(np.asarray(g, dtype=np.float32))
    return np.concatenate(glob), (np.concatenate(fine) if fine else None)


def _fine_rerank(
    encoder: FineEncoder, sims: np.ndarray, text_fine: np.ndarray, image_fine: np.ndarray
) -> Rerank:
    """Global cosine + fine score of a query's candidates, as `MapDatabase.search` scores."""

    def rerank(q: int, top: np.ndarray) -> np.ndarray:
        return np.asarray(sims[q, top] + encoder.fine_scores(text_fine[q], image_fine[top]))

    return rerank


def evaluate_encoder(
    encoder: Encoder,
    name: str,
    data_root: str | Path,
    cities: Sequence[str],
    variants: Sequence[str] = ("generator",),
    *,
    seed: int = 0,
    ks: Sequence[int] = KS,
    rerank_top: int = 50,
    max_places: int | None = None,
    batch_size: int = 32,
) -> list[EvalRow]:
    """One `EvalRow` per city and variant; images are encoded once per city."""
    rows: list[EvalRow] = []
    for city in cities:
        paths, labels, anns = _city_gallery(Path(data_root), city, max_places)
        if not paths:
            raise ValueError(f"city {city!r} under {data_root} has no images")
        image_emb, image_fine = _encode_gallery(encoder, paths, batch_size)
        queries = make_eval_queries(anns, seed, variants=variants)
        for variant in variants:
            qs = [q for q in queries if q.variant == variant]
            texts = [q.text for q in qs]
            rerank: Rerank | None = None
            if isinstance(encoder, FineEncoder) and image_fine is not None:
                text_emb, text_fine = encoder.encode_texts_with_fine(texts)
                rerank = _fine_rerank(encoder, text_emb @ image_emb.T, text_fine, image_fine)
            else:
                text_emb = encoder.encode_texts(texts)
            recall = recall_from_embeddings(
                image_emb,
                labels,
                np.asarray(text_emb, dtype=np.float32),
                [q.place_id for q in qs],
                ks,
                rerank=rerank,
                rerank_top=rerank_top,
            )
            rows.append(
                EvalRow(
                    name,
                    city,
                    variant,
                    len(qs),
                    len(paths),
                    place_recall=recall["place"],
                    image_recall=recall["image"],
                )
            )
    return rows


def static_eval(
    encoders: Mapping[str, Encoder],
    data_root: str | Path,
    cities: Sequence[str],
    variants: Sequence[str] = ("generator",),
    **kwargs: Any,
) -> EvalTable:
    """Table 2: every encoder (label -> encoder) x city x variant."""
    table = EvalTable(
        meta={
            "protocol": "text->place, gallery = all images of the city; place R@k: the "
            "target place among the k best distinct places (each scored by its best image); "
            "image R@k: an image of the target place among the k best images (Table 2); "
            "ties count against the target",
            "data_root": str(data_root),
            "cities": list(cities),
            "variants": list(variants),
            "fingerprints": {name: enc.fingerprint for name, enc in encoders.items()},
            **{k: v for k, v in kwargs.items() if isinstance(v, int | str | None)},
        }
    )
    for name, enc in encoders.items():
        table.rows += evaluate_encoder(enc, name, data_root, cities, variants, **kwargs)
    return table


def _refuse_run_selected_on(run_dir: Path, eval_cities: Sequence[str]) -> None:
    """Refuse a run directory whose saved config trained or validated on an evaluation city.

    The row's YAML may have been fixed since the run (e.g. validation moved off the test
    city), but an old ``best/`` was still selected the old way, and training would resume
    it: the configs the run saved (the run directory and ``last/`` each keep one; ``best/``
    holds weights only) are what count.
    """
    from .train import CONFIG_DUMP
    from .train.params import refuse_selection_on_test_cities

    for dump in (run_dir / CONFIG_DUMP, run_dir / "last" / CONFIG_DUMP):
        if not dump.is_file():
            continue
        saved = yaml.safe_load(dump.read_text(encoding="utf-8")) or {}
        refuse_selection_on_test_cities(
            list(saved.get("train_cities") or []),
            list(saved.get("val_cities") or []),
            eval_cities,
            source=f"{dump} (an earlier run; remove {run_dir} and train again)",
        )


def run_ablation(
    config_dir: str | Path,
    *,
    train: bool = False,
    overrides: Sequence[str] = (),
    cities: Sequence[str] | None = None,
    rows: Sequence[str] = ABLATION_ROWS,
    **kwargs: Any,
) -> EvalTable:
    """Table 3: for each row's YAML, optionally train it (`train(TrainConfig)`), then evaluate
    its best checkpoint (else its last) on ``cities`` (default: the config's test cities).

    "best" is selected on the config's validation cities, so a row whose validation (or
    training) cities include an evaluation city is refused before anything is trained or
    read: its number would be selected on the city it reports.
    """
    from dlgpr_core.encoders.factory import create_encoder

    from .train import TrainConfig
    from .train import train as train_fn

    config_dir = Path(config_dir)
    table = EvalTable(meta={"config_dir": str(config_dir), "train": train, "rows": list(rows)})
    for row in rows:
        config = TrainConfig.from_yaml(config_dir / f"{row}.yaml", list(overrides))
        eval_cities = list(cities or config.test_cities)
        if not eval_cities:
            raise ValueError(f"ablation row {row!r}: no evaluation city (pass cities=...)")
        config.refuse_test_cities(eval_cities)
        _refuse_run_selected_on(config.out_dir, eval_cities)
        if train:
            train_fn(config)
        ckpt = next(
            (config.out_dir / d for d in ("best", "last") if (config.out_dir / d).is_dir()), None
        )
        if ckpt is None:
            raise FileNotFoundError(
                f"ablation row {row!r}: no checkpoint under {config.out_dir}; run with --train"
            )
        enc = create_encoder(f"cmpl:{ckpt}")
        table.meta.setdefault("checkpoints", {})[row] = str(ckpt)
        # Where "best" was selected and where it is reported: never the same city.
        table.meta.setdefault("selected_on", {})[row] = list(config.val_cities)
        table.meta.setdefault("evaluated_on", {})[row] = eval_cities
        table.rows += evaluate_encoder(enc, row, config.data_root, eval_cities, **kwargs)
    return table
