"""Static text-to-place retrieval recall, the number the encoder is trained for.

Kept in plain numpy (no index library) so it can score any Encoder in tests and in the
training script alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Encoder

ImageLike = Image.Image | str | Path


Rerank = Callable[[int, np.ndarray], np.ndarray]
"""``rerank(query_index, candidate_image_indices) -> new scores`` of those candidates."""


def place_recall_from_embeddings(
    image_emb: np.ndarray,
    image_place: Sequence[str],
    text_emb: np.ndarray,
    text_place: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    *,
    rerank: Rerank | None = None,
    rerank_top: int | None = 100,
) -> dict[str, float]:
    """Recall@k over places: each place scores as its best-matching image, and a query hits
    when its place is among the k best places.

    With ``rerank`` (e.g. a fine-grained score), each query's ``rerank_top`` best images by
    cosine (None: all) are re-ordered by it and stay ahead of the rest, which keep their
    cosine order -- how a map search with re-ranking ranks, so this is the one recall
    function for plain encoders, CMPL validation and the static evaluation alike.
    """
    places = sorted(set(image_place))
    col = {p: i for i, p in enumerate(places)}
    img_col = np.array([col[p] for p in image_place])
    target = np.array([col.get(p, -1) for p in text_place])
    if (target < 0).any():
        raise ValueError("a query names a place that has no image")
    sims = np.asarray(text_emb @ image_emb.T, dtype=np.float32)  # (queries, images)
    n_img = sims.shape[1]
    n_top = n_img if rerank_top is None else min(rerank_top, n_img)
    if rerank is not None and n_top > 0:
        # Scores become minus the position in the re-ranked list: unique, so no ties.
        ranked = np.empty_like(sims)
        positions = -np.arange(n_img, dtype=np.float32)
        for q in range(sims.shape[0]):
            order = np.argsort(-sims[q], kind="stable")
            top = order[:n_top]
            new = np.asarray(rerank(q, top), dtype=np.float32)
            order[:n_top] = top[np.argsort(-new, kind="stable")]
            ranked[q, order] = positions
        sims = ranked
    place_sims = np.full((len(text_emb), len(places)), -np.inf, dtype=np.float32)
    np.maximum.at(place_sims.T, img_col, sims.T)
    target_score = place_sims[np.arange(len(target)), target]
    # Rank = number of places scoring strictly higher than the target (ties favour the hit).
    rank = (place_sims > target_score[:, None]).sum(axis=1)
    return {f"R@{k}": float((rank < k).mean()) if len(rank) else 0.0 for k in ks}


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
