"""Validation of the tower CMPL on a held-out city, from its cached features.

Queries per place: its description, its caption and the text augmentation's variants (with
the validation seed); the ranking is `encoders.evaluate.recall_from_embeddings` with the
model's own score re-ranking each query's top-N images, as a map search ranks, so the
numbers count exactly as `dlgpr retriever eval` counts. The selection score is the mean
place R@10 over the three query kinds: "best" must read what people say, not only the
generator's template. (The evaluation-only rephraser is not used here: it never shapes
training, selection included.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dlgpr_core.encoders.evaluate import recall_from_embeddings

from ...features import ImageFeatures, TextFeatures
from ..cache import SegmentStore
from ..model import TowerCMPL
from .data import CityData, image_tensors, text_tensors

KINDS = ("description", "caption", "augmented")


@torch.no_grad()
def encode_city_images(model: TowerCMPL, data: CityData, batch: int = 128) -> ImageFeatures:
    glob: list[torch.Tensor] = []
    fine: dict[int, list[torch.Tensor]] = {lv: [] for lv in model.levels}
    for start in range(0, len(data.image_place), batch):
        rows = list(range(start, min(start + batch, len(data.image_place))))
        feats = model.encode_image(*image_tensors(data, rows, model.levels))
        glob.append(feats.global_)
        for lv in model.levels:
            fine[lv].append(feats.fine[lv])
    return ImageFeatures(torch.cat(glob), {lv: torch.cat(f) for lv, f in fine.items()})


@torch.no_grad()
def encode_texts(
    model: TowerCMPL, store: SegmentStore, items: Sequence[np.ndarray], batch: int = 256
) -> TextFeatures:
    glob: list[torch.Tensor] = []
    fine: dict[int, list[torch.Tensor]] = {lv: [] for lv in model.levels}
    for start in range(0, len(items), batch):
        feats = model.encode_text(*text_tensors(store, list(items[start : start + batch])))
        glob.append(feats.global_)
        for lv in model.levels:
            fine[lv].append(feats.fine[lv])
    return TextFeatures(torch.cat(glob), {lv: torch.cat(f) for lv, f in fine.items()})


def query_kind(kind: str) -> str:
    return kind if kind in ("description", "caption") else "augmented"


@torch.no_grad()
def validate(
    model: TowerCMPL,
    data: CityData,
    store: SegmentStore,
    rerank_top: int = 50,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """``<kind>/place R@k`` and ``<kind>/image R@k`` per query kind, and ``score``."""
    was_training = model.training
    model.eval()
    try:
        img = encode_city_images(model, data)
        labels = [str(int(p)) for p in data.image_place]
        out: dict[str, float] = {}
        for kind in KINDS:
            queries = [
                (p, t.rows)
                for p, texts in enumerate(data.texts)
                for t in texts
                if query_kind(t.kind) == kind
            ]
            if not queries:
                continue
            txt = encode_texts(model, store, [rows for _, rows in queries])

            def rerank(q: int, top: np.ndarray, txt: TextFeatures = txt) -> np.ndarray:
                idx = torch.from_numpy(top)
                cand = ImageFeatures(img.global_[idx], {lv: f[idx] for lv, f in img.fine.items()})
                one = TextFeatures(
                    txt.global_[q : q + 1], {lv: f[q : q + 1] for lv, f in txt.fine.items()}
                )
                return model.score(cand, one)[:, 0].numpy()

            recall = recall_from_embeddings(
                img.global_.numpy(),
                labels,
                txt.global_.numpy(),
                [str(p) for p, _ in queries],
                ks,
                rerank=rerank if model.levels and model.config.score_fine_weight else None,
                rerank_top=rerank_top,
            )
            for level in ("place", "image"):
                out |= {f"{kind}/{level} {k}": v for k, v in recall[level].items()}
        r10 = [v for k, v in out.items() if k.endswith("/place R@10")]
        out["score"] = float(np.mean(r10)) if r10 else 0.0
        return out
    finally:
        model.train(was_training)
