"""Training data of the tower CMPL: cached tower features of places, their texts, batches.

A city becomes a `CityData`: every image's cached maps (in memory), and every place's texts
(the description, the caption and, for training, the text augmentation's variants) as rows
of the segment store. Batches are P places x K views drawn by the retriever's own
`PlaceBatchSampler` (same determinism, rank sharding and resume behaviour as the image
trainer); each row then gets one of its place's texts, chosen by the sample's seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlgpr_core.data.annotations import PlaceAnnotation, read_annotations
from dlgpr_core.data.text_augment import TextAugmentConfig, TextAugmenter

from ...data import PlaceRecord, SampleKey, _annotation_file, read_places
from ..cache import ImageFeatureCache, SegmentStore
from ..extract import TowerExtractor
from ..model import TowerDims
from ..segments import split_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextItem:
    """One text of a place: how it was made and its segments' rows in the store."""

    kind: str  # description, caption, or an augmentation ("partial", "dialogue/spoken", ...)
    rows: np.ndarray


@dataclass
class CityData:
    """Cached features of one city's places (see the module docstring)."""

    city: str
    places: list[PlaceRecord]
    image_place: np.ndarray  # [N_img] place index of every image (places x views order)
    images: dict[str, np.ndarray]  # s<stride> [N, C, H, W], pooled [N, P], saliency [N, h, w]
    texts: list[list[TextItem]] = field(default_factory=list)  # per place; [0] = description

    @property
    def place_sizes(self) -> list[int]:
        return [len(p.images) for p in self.places]


def image_paths(places: list[PlaceRecord]) -> list[Path]:
    return [im for p in places for im in p.images]


def _annotations(root: Path, city: str, places: list[PlaceRecord]) -> list[PlaceAnnotation]:
    by_id = {a.place_id: a for a in read_annotations(_annotation_file(root, city))}
    return [by_id[p.place_id] for p in places]


def place_texts(
    anns: list[PlaceAnnotation],
    augmenter: TextAugmenter | None,
    seed: int,
) -> list[list[tuple[str, str]]]:
    """(kind, text) of every place: description first, caption, then augmented variants."""
    out = []
    for ann in anns:
        texts = [("description", ann.description), ("caption", ann.caption)]
        if augmenter is not None:
            for v in augmenter.variants(ann, seed):
                kind = f"{v.transformation}/spoken" if v.spoken else v.transformation
                texts.append((kind, v.text))
        out.append(texts)
    return out


def load_city(
    extractor: TowerExtractor,
    root: Path,
    city: str,
    cache_dir: Path,
    store: SegmentStore,
    *,
    augment: TextAugmentConfig | None = None,
    augment_from: list[PlaceAnnotation] | None = None,
    seed: int = 0,
    max_places: int | None = None,
    progress: bool = True,
) -> CityData:
    """Build (once) and load a city's cached features. `augment` adds its variants to every
    place, with the vocabulary of `augment_from` (the training places) or of the city."""
    places = read_places(root, [city], max_places)
    cache = ImageFeatureCache(cache_dir, city, image_paths(places), extractor.image_key())
    cache.build(extractor.image_features, progress=progress)
    images = cache.load(in_memory=True)
    anns = _annotations(root, city, places)
    augmenter = None
    if augment is not None and augment.variants_per_place > 0:
        augmenter = TextAugmenter.from_places(augment_from or anns, augment)
    texts = place_texts(anns, augmenter, seed)
    segs = {t: split_segments(t, extractor.config.segment_words) for pl in texts for _, t in pl}
    store.add(
        [s for ss in segs.values() for s in ss], extractor.segment_features, progress=progress
    )
    items = [[TextItem(kind, store.rows(segs[t])) for kind, t in pl] for pl in texts]
    image_place = np.array([i for i, p in enumerate(places) for _ in p.images], dtype=np.int64)
    return CityData(city, places, image_place, images, items)


def tower_dims(extractor: TowerExtractor, data: CityData, store: SegmentStore) -> TowerDims:
    """The tower widths as the cache holds them."""
    channels = {int(k[1:]): int(v.shape[1]) for k, v in data.images.items() if k[1:].isdigit()}
    return TowerDims(
        channels,
        int(data.images["pooled"].shape[1]),
        int(store.feats.shape[-1]),
        list(extractor.layers),
    )


# -- batches ----------------------------------------------------------------------------------


@dataclass
class FeatureBatch:
    """One P x K batch of cached features: images, the distinct texts, and the pairing."""

    maps: dict[int, Tensor]
    pooled: Tensor
    saliency: Tensor
    segments: Tensor  # [T, S, layers, W] distinct texts, zero-padded
    mask: Tensor  # [T, S]
    text_index: Tensor  # [B] text row of each image row
    labels: Tensor  # [B] place label of each image row

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(
            {s: m.to(device) for s, m in self.maps.items()},
            self.pooled.to(device),
            self.saliency.to(device),
            self.segments.to(device),
            self.mask.to(device),
            self.text_index.to(device),
            self.labels.to(device),
        )


def image_tensors(
    data: CityData, rows: np.ndarray | list[int], strides: list[int]
) -> tuple[dict[int, Tensor], Tensor, Tensor]:
    """(maps, pooled, saliency) of image rows as float tensors."""
    idx = np.asarray(rows, dtype=np.int64)
    maps = {s: torch.from_numpy(np.asarray(data.images[f"s{s}"][idx], np.float32)) for s in strides}
    pooled = torch.from_numpy(np.asarray(data.images["pooled"][idx], np.float32))
    saliency = torch.from_numpy(np.asarray(data.images["saliency"][idx], np.float32))
    return maps, pooled, saliency


def text_tensors(store: SegmentStore, items: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Segment features of texts (rows into the store), padded: ([T, S, L, W], mask [T, S])."""
    width = max(len(r) for r in items)
    feats = np.zeros((len(items), width, *store.feats.shape[1:]), np.float32)
    mask = np.zeros((len(items), width), bool)
    for i, rows in enumerate(items):
        feats[i, : len(rows)] = store.feats[rows]
        mask[i, : len(rows)] = True
    return torch.from_numpy(feats), torch.from_numpy(mask)


def pick_text(texts: list[TextItem], seed: int, description_prob: float) -> int:
    """Index of the text of one batch row: the description (index 0) with probability
    `description_prob`, else one of the others uniformly (the description if none)."""
    rng = np.random.default_rng(seed)
    if len(texts) == 1 or rng.random() < description_prob:
        return 0
    return 1 + int(rng.integers(len(texts) - 1))


def make_batch(
    data: CityData,
    store: SegmentStore,
    keys: list[SampleKey],
    strides: list[int],
    description_prob: float,
) -> FeatureBatch:
    rows = [k.image for k in keys]
    labels = data.image_place[rows]
    chosen = [
        (int(p), pick_text(data.texts[int(p)], k.seed, description_prob))
        for p, k in zip(labels, keys, strict=True)
    ]
    distinct = list(dict.fromkeys(chosen))
    where = {c: i for i, c in enumerate(distinct)}
    segments, mask = text_tensors(store, [data.texts[p][t].rows for p, t in distinct])
    maps, pooled, saliency = image_tensors(data, rows, strides)
    return FeatureBatch(
        maps,
        pooled,
        saliency,
        segments,
        mask,
        torch.tensor([where[c] for c in chosen], dtype=torch.long),
        torch.from_numpy(labels.astype(np.int64)),
    )
