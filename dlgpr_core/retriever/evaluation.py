"""Static text -> place recall of a CMPL retriever, the validation number of training.

Ranking follows how the retriever is deployed: a cheap global-cosine pass over every image,
then CMPL.score (global + fine) re-ranks only the top `rerank_top` images of each query, so
the cost stays linear in the map size. A place ranks where its first image appears in the
re-ranked list (re-ranked images first, then the rest in global order), so a query hits at k
when any image of its place is among the images of the k best places.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import Tensor

from dlgpr_core.encoders.evaluate import place_recall_from_embeddings

from .data import PlaceTextDataset
from .features import ImageFeatures, TextFeatures
from .model import CMPL


@torch.no_grad()
def encode_images(
    model: CMPL,
    data: PlaceTextDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager[object] | None = None,
) -> ImageFeatures:
    """Global and fine features of every image of `data`, gathered on the CPU in fp32."""
    glob: list[Tensor] = []
    fine: dict[int, list[Tensor]] = {}
    for start in range(0, len(data), batch_size):
        idx = range(start, min(start + batch_size, len(data)))
        images = torch.stack([data.load_image(i) for i in idx]).to(device)
        with autocast or nullcontext():
            feats = model.encode_image(images)
        glob.append(feats.global_.float().cpu())
        for level, f in feats.fine.items():
            fine.setdefault(level, []).append(f.float().cpu())
    return ImageFeatures(torch.cat(glob), {lv: torch.cat(f) for lv, f in fine.items()})


@torch.no_grad()
def encode_texts(
    model: CMPL,
    texts: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager[object] | None = None,
) -> TextFeatures:
    glob: list[Tensor] = []
    fine: dict[int, list[Tensor]] = {}
    for start in range(0, len(texts), batch_size):
        tok = model.tokenize(texts[start : start + batch_size]).to(device)
        with autocast or nullcontext():
            feats = model.encode_text(tok)
        glob.append(feats.global_.float().cpu())
        for level, f in feats.fine.items():
            fine.setdefault(level, []).append(f.float().cpu())
    return TextFeatures(torch.cat(glob), {lv: torch.cat(f) for lv, f in fine.items()})


def recall_from_features(
    model: CMPL,
    img: ImageFeatures,
    img_place: Tensor,
    txt: TextFeatures,
    txt_place: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    rerank_top: int | None = 100,
) -> dict[str, float]:
    """R@k of text queries over places, from precomputed features (see the module doc).

    `rerank_top=None` re-ranks every image (exact, quadratic); 0 ranks by the global cosine.
    The ranking itself is `encoders.evaluate.place_recall_from_embeddings`, with CMPL.score
    as its re-ranking function, so validation and the static evaluation count alike.
    """
    use_fine = bool(img.fine) and bool(txt.fine) and bool(model.config.score_fine_weight)

    def rerank(q: int, top: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(top)
        cand = ImageFeatures(img.global_[idx], {lv: f[idx] for lv, f in img.fine.items()})
        query = TextFeatures(
            txt.global_[q : q + 1], {lv: f[q : q + 1] for lv, f in txt.fine.items()}
        )
        with torch.no_grad():
            return model.score(cand, query)[:, 0].float().numpy()

    return place_recall_from_embeddings(
        img.global_.float().numpy(),
        [str(int(p)) for p in img_place.tolist()],
        txt.global_.float().numpy(),
        [str(int(p)) for p in txt_place.tolist()],
        ks,
        rerank=rerank if use_fine else None,
        rerank_top=rerank_top,
    )


def place_recall(
    model: CMPL,
    val_data: PlaceTextDataset,
    ks: Sequence[int] = (1, 5, 10),
    rerank_top: int | None = 100,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast: AbstractContextManager[object] | None = None,
) -> dict[str, float]:
    """Text -> place R@k on `val_data`: query = each place's fine-grained description, gallery
    = every image of every place (images use `val_data.transform`, normally the eval one)."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        img = encode_images(model, val_data, batch_size, device, autocast)
        txt = encode_texts(
            model, [p.description for p in val_data.places], batch_size, device, autocast
        )
    finally:
        model.train(was_training)
    labels = val_data.image_labels()
    queries = torch.arange(len(val_data.places))
    return recall_from_features(model, img, labels, txt, queries, ks, rerank_top)
