"""Static text-to-place retrieval recall, the number the encoder is trained for.

Kept in plain numpy (no index library) so it can score any Encoder in tests and in the
training script alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Encoder

ImageLike = Image.Image | str | Path


def place_recall_from_embeddings(
    image_emb: np.ndarray,
    image_place: Sequence[str],
    text_emb: np.ndarray,
    text_place: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k over places: each place scores as its best-matching image, and a query hits
    when its place is among the k best places."""
    places = sorted(set(image_place))
    col = {p: i for i, p in enumerate(places)}
    img_col = np.array([col[p] for p in image_place])
    sims = text_emb @ image_emb.T  # (queries, images)
    place_sims = np.full((len(text_emb), len(places)), -np.inf, dtype=np.float32)
    np.maximum.at(place_sims.T, img_col, sims.T)
    target = np.array([col.get(p, -1) for p in text_place])
    if (target < 0).any():
        raise ValueError("a query names a place that has no image")
    target_score = place_sims[np.arange(len(target)), target]
    # Rank = number of places scoring strictly higher than the target (ties favour the hit).
    rank = (place_sims > target_score[:, None]).sum(axis=1)
    return {f"R@{k}": float((rank < k).mean()) for k in ks}


def _load(im: ImageLike) -> Image.Image:
    if isinstance(im, Image.Image):
        return im
    with Image.open(im) as opened:
        return opened.convert("RGB")


def embed_images_by_place(
    encoder: Encoder, images_by_place: Mapping[str, Sequence[ImageLike]], batch: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Embed all images, loading paths lazily so a city never sits in memory decoded."""
    items = [(pid, im) for pid, ims in images_by_place.items() for im in ims]
    chunks = [np.zeros((0, encoder.dim), np.float32)]
    for start in range(0, len(items), batch):
        chunks.append(encoder.encode_images([_load(im) for _, im in items[start : start + batch]]))
    return np.concatenate(chunks), [pid for pid, _ in items]


def text_to_place_recall(
    encoder: Encoder,
    images_by_place: Mapping[str, Sequence[ImageLike]],
    queries: Sequence[tuple[str, str]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@k of `queries` = (place_id, text) pairs against all images of all places."""
    image_emb, image_place = embed_images_by_place(encoder, images_by_place)
    text_emb = encoder.encode_texts([text for _, text in queries])
    return place_recall_from_embeddings(
        image_emb, image_place, text_emb, [pid for pid, _ in queries], ks
    )
