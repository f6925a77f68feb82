"""Static text-to-place retrieval recall, the number the encoder is trained for.

Kept in plain numpy (no index library) so it can score any Encoder in tests and in the
training script alike. Two counts, because the sources use two: *place* recall ranks the
distinct places by their best image (what localisation needs), *image* recall ranks the
images themselves (the paper's Table 2). Both count ties against the target, as the
dialogue metrics do, so a collapsed encoder scores chance rather than a perfect recall.
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


def ranked_scores(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    *,
    rerank: Rerank | None = None,
    rerank_top: int | None = 100,
) -> np.ndarray:
    """(queries, images) scores whose order is the retrieval order.

    Without ``rerank`` these are the cosines. With it (e.g. a fine-grained score), each
    query's ``rerank_top`` best images by cosine (None: all) are re-ordered by it and stay
    ahead of the rest, which keep their cosine order -- how a map search with re-ranking
    ranks; the scores are then minus the position in that list. Computed once and shared by
    place and image recall, because re-ranking is the expensive part.
    """
    sims = np.asarray(text_emb @ image_emb.T, dtype=np.float32)
    n_img = sims.shape[1]
    n_top = n_img if rerank_top is None else min(rerank_top, n_img)
    if rerank is None or n_top == 0:
        return sims
    ranked = np.empty_like(sims)
    positions = -np.arange(n_img, dtype=np.float32)
    for q in range(sims.shape[0]):
        order = np.argsort(-sims[q], kind="stable")
        top = order[:n_top]
        new = np.asarray(rerank(q, top), dtype=np.float32)
        order[:n_top] = top[np.argsort(-new, kind="stable")]
        ranked[q, order] = positions
    return ranked


def _hits(rank: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    return {f"R@{k}": float((rank < k).mean()) if len(rank) else 0.0 for k in ks}


def _targets(
    image_place: Sequence[str], text_place: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sorted places, each image's place column and each query's target column."""
    places = sorted(set(image_place))
    col = {p: i for i, p in enumerate(places)}
    img_col = np.array([col[p] for p in image_place], dtype=np.int64)
    target = np.array([col.get(p, -1) for p in text_place], dtype=np.int64)
    if (target < 0).any():
        raise ValueError("a query names a place that has no image")
    return places, img_col, target


def place_ranks(
    scores: np.ndarray, image_place: Sequence[str], text_place: Sequence[str]
) -> np.ndarray:
    """0-indexed rank of each query's target among the distinct places, each place scored
    by its best image.

    Ties count against the target (as `dialogue.metrics.best_rank`): the rank is the number
    of *other* places scoring at least as high. Counting only strictly higher places would
    give a collapsed encoder (every embedding equal) a perfect recall.
    """
    places, img_col, target = _targets(image_place, text_place)
    n_q = scores.shape[0]
    place_sims = np.full((n_q, len(places)), -np.inf, dtype=np.float32)
    np.maximum.at(place_sims.T, img_col, scores.T)
    target_score = place_sims[np.arange(n_q), target]
    # The target's own column is >= itself: subtract it.
    return (place_sims >= target_score[:, None]).sum(axis=1) - 1


def image_ranks(
    scores: np.ndarray, image_place: Sequence[str], text_place: Sequence[str]
) -> np.ndarray:
    """0-indexed rank of each query's best-ranked target image among all images.

    Ties count against the target: the rank is the number of images of *other* places
    scoring at least as high as the target's best image (its own other images are hits
    too, so they never count against it).
    """
    _, img_col, target = _targets(image_place, text_place)
    positive = img_col[None, :] == target[:, None]  # (queries, images)
    best_pos = np.where(positive, scores, -np.inf).max(axis=1)
    return ((scores >= best_pos[:, None]) & ~positive).sum(axis=1)


def recall_from_embeddings(
    image_emb: np.ndarray,
    image_place: Sequence[str],
    text_emb: np.ndarray,
    text_place: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    *,
    rerank: Rerank | None = None,
    rerank_top: int | None = 100,
) -> dict[str, dict[str, float]]:
    """Both static recalls from one ranking: ``{"place": {...}, "image": {...}}``.

    * place R@k: the target place is among the k best *distinct places* (each scored by its
      best image): what a robot asking "which place?" gets.
    * image R@k: an image of the target place is among the k best *images* (the paper's
      Table 2 counting). It is never above place R@k, since every place ahead of the
      target puts at least one image ahead of its best image.
    Ties count against the target in both.
    """
    scores = ranked_scores(image_emb, text_emb, rerank=rerank, rerank_top=rerank_top)
    return {
        "place": _hits(place_ranks(scores, image_place, text_place), ks),
        "image": _hits(image_ranks(scores, image_place, text_place), ks),
    }


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
    """Place R@k: each place scores as its best-matching image, and a query hits when its
    place is among the k best places (ties count against it; see `place_ranks`).

    The one place-recall function for plain encoders, CMPL validation and the static
    evaluation alike, so they all count the same way; `recall_from_embeddings` adds the
    image-level count.
    """
    scores = ranked_scores(image_emb, text_emb, rerank=rerank, rerank_top=rerank_top)
    return _hits(place_ranks(scores, image_place, text_place), ks)


def image_recall_from_embeddings(
    image_emb: np.ndarray,
    image_place: Sequence[str],
    text_emb: np.ndarray,
    text_place: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    *,
    rerank: Rerank | None = None,
    rerank_top: int | None = 100,
) -> dict[str, float]:
    """Image R@k (the paper's Table 2 counting): a query hits when an image of its place is
    among the k best images (ties count against it; see `image_ranks`)."""
    scores = ranked_scores(image_emb, text_emb, rerank=rerank, rerank_top=rerank_top)
    return _hits(image_ranks(scores, image_place, text_place), ks)


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
    """Place R@k of `queries` = (place_id, text) pairs against all images of all places."""
    image_emb, image_place = embed_images_by_place(encoder, images_by_place)
    text_emb = encoder.encode_texts([text for _, text in queries])
    return place_recall_from_embeddings(
        image_emb, image_place, text_emb, [pid for pid, _ in queries], ks
    )
