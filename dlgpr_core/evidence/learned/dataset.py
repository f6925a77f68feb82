"""A city as training sees it: its targets beside its cached frozen trunk features.

Also the batching of both, and the concatenation of several cities into one training set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import EvidenceTrainConfig
from .features import FeatureCache, FrozenTower
from .targets import CityTargets, city_targets
from .vocab import LabelVocab

log = logging.getLogger(__name__)


@dataclass
class CityData:
    """A city's targets and its cached trunk features (stride -> (N, C, H, W) float16)."""

    targets: CityTargets
    features: dict[int, np.ndarray]

    def __len__(self) -> int:
        return len(self.targets)


def prepare_city(
    config: EvidenceTrainConfig, city: str, vocab: LabelVocab, tower: FrozenTower
) -> CityData:
    targets = city_targets(config.data_root, city, vocab, config.max_places)
    strides = sorted({*config.heads.strides, 16})
    cache = FeatureCache(config.features_dir(), city, targets.paths, tower.info.key(), strides)
    t0 = time.perf_counter()
    if not cache.complete():
        log.info("computing frozen features of %s (%d images)", city, len(targets))
        cache.build(tower, config.feature_batch_size, progress=config.progress)
        log.info("features of %s took %.0f s", city, time.perf_counter() - t0)
    feats = cache.load()
    rows, cols = targets.classes.shape[1:]
    if feats[16].shape[-2:] != (rows, cols):
        raise ValueError(
            f"{city}: stride-16 features are {feats[16].shape[-2:]}, targets {(rows, cols)}"
        )
    return CityData(targets, feats)


@dataclass
class Batch:
    features: dict[int, torch.Tensor]
    classes: torch.Tensor
    elements: torch.Tensor
    attributes: dict[str, torch.Tensor]
    street: dict[str, torch.Tensor]


def make_batch(data: CityData, idx: Sequence[int]) -> Batch:
    ix = np.sort(np.asarray(idx))
    t = data.targets
    return Batch(
        features={s: torch.from_numpy(np.asarray(f[ix])) for s, f in data.features.items()},
        classes=torch.from_numpy(t.classes[ix]),
        elements=torch.from_numpy(t.elements[ix]),
        attributes={a: torch.from_numpy(v[ix]) for a, v in t.attributes.items()},
        street={a: torch.from_numpy(v[ix]) for a, v in t.street.items()},
    )


def batches(data: CityData, batch_size: int, order: Sequence[int] | None = None) -> Iterator[Batch]:
    order = list(range(len(data))) if order is None else list(order)
    for s in range(0, len(order), batch_size):
        yield make_batch(data, order[s : s + batch_size])


def concat(sets: Sequence[CityData]) -> CityData:
    if len(sets) == 1:
        return sets[0]
    t = [s.targets for s in sets]
    targets = CityTargets(
        city="+".join(x.city for x in t),
        paths=[p for x in t for p in x.paths],
        place_ids=[p for x in t for p in x.place_ids],
        size=t[0].size,
        classes=np.concatenate([x.classes for x in t]),
        elements=np.concatenate([x.elements for x in t]),
        attributes={a: np.concatenate([x.attributes[a] for x in t]) for a in t[0].attributes},
        street={a: np.concatenate([x.street[a] for x in t]) for a in t[0].street},
        present=np.concatenate([x.present for x in t]),
    )
    feats = {s: np.concatenate([np.asarray(x.features[s]) for x in sets]) for s in sets[0].features}
    return CityData(targets, feats)
