"""Data module of CMPL training: places (images + texts) read from a DQ-Cities-format root.

A data set root follows the GSV-Cities layout (``Images/<City>/*.jpg``) plus DQ-Cities
annotations (``Annotations/<City>.jsonl``, one `PlaceAnnotation` per line). The annotations
already list every view's image, so they are the single source read here; SynthCities writes
the same layout, so synthetic and real data go through the same code.

Batches are built as in the VPR codebases (GSV-Cities, MixVPR, BoQ): P places x K views, so
every image has K-1 positives in its batch for the multi-similarity loss, and the place label
is what every loss term uses as ground truth. Every random decision of a batch (which places,
which views, which text, the augmentation) is a pure function of (seed, epoch, place), so a
resumed run sees exactly the batches of an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import transforms

from dlgpr_core.data.annotations import read_annotations, view_image_path

from .long_text import LongTextTokenizer, TokenizedText

log = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class PlaceRecord:
    """One place: its images (absolute paths) and its texts."""

    key: str  # "<City>/<place_id>", unique across cities
    city: str
    place_id: int
    images: tuple[Path, ...]
    description: str
    caption: str


def _annotation_file(root: Path, city: str) -> Path:
    """Exact name first, then a case-insensitive match, as the GSV reader does for images."""
    ann_dir = root / "Annotations"
    exact = ann_dir / f"{city}.jsonl"
    if exact.is_file():
        return exact
    available = sorted(p.stem for p in ann_dir.glob("*.jsonl")) if ann_dir.is_dir() else []
    for stem in available:
        if stem.lower() == city.lower():
            return ann_dir / f"{stem}.jsonl"
    raise FileNotFoundError(
        f"no annotations for city {city!r} under {ann_dir} (available: {available})"
    )


def read_places(
    root: str | Path, cities: Sequence[str], max_places: int | None = None
) -> list[PlaceRecord]:
    """Places of `cities` with at least one existing image; missing images are counted and
    logged rather than fatal, since a partially downloaded city is still trainable."""
    root = Path(root)
    places: list[PlaceRecord] = []
    for city in cities:
        missing = 0
        n_city = 0
        for ann in read_annotations(_annotation_file(root, city)):
            if max_places is not None and n_city >= max_places:
                break
            images = []
            for view in ann.views:
                path = view_image_path(root, view)
                if path.is_file():
                    images.append(path)
                else:
                    missing += 1
            if not images:
                continue
            places.append(
                PlaceRecord(
                    key=f"{ann.city}/{ann.place_id}",
                    city=ann.city,
                    place_id=ann.place_id,
                    images=tuple(images),
                    description=ann.description,
                    caption=ann.caption,
                )
            )
            n_city += 1
        if missing:
            log.warning("%s: %d annotated images are missing on disk", city, missing)
    keys = [p.key for p in places]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate places in cities {list(cities)} (a city listed twice?)")
    return places


def split_places(
    root: str | Path,
    train_cities: Sequence[str],
    val_cities: Sequence[str] = (),
    val_fraction: float = 0.0,
    seed: int = 0,
    max_places: int | None = None,
) -> tuple[list[PlaceRecord], list[PlaceRecord]]:
    """(train, val) split by place, never by image: a held-out city when `val_cities` is given
    (the honest test of generalisation), else a seeded `val_fraction` of the train places."""
    overlap = {c.lower() for c in train_cities} & {c.lower() for c in val_cities}
    if overlap:
        raise ValueError(f"cities both in train and val: {sorted(overlap)}")
    train = read_places(root, train_cities, max_places)
    if val_cities:
        return train, read_places(root, val_cities, max_places)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = math.ceil(len(train) * val_fraction) if val_fraction > 0 else 0
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    held = set(order[:n_val].tolist())
    val = [p for i, p in enumerate(train) if i in held]
    return [p for i, p in enumerate(train) if i not in held], val


# -- transforms -------------------------------------------------------------------------------


class AugmentConfig(BaseModel):
    """Modest photometric/geometric augmentation. No horizontal flip: descriptions state
    left/right relations, which a mirrored image would contradict."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    crop_scale_min: float = Field(default=0.6, gt=0.0, le=1.0)
    brightness: float = Field(default=0.3, ge=0.0)
    contrast: float = Field(default=0.3, ge=0.0)
    saturation: float = Field(default=0.2, ge=0.0)
    hue: float = Field(default=0.02, ge=0.0, le=0.5)


def train_transform(image_size: int | Sequence[int], aug: AugmentConfig) -> ImageTransform:
    """Random resized crop + colour jitter, with CLIP's normalisation."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    norm = transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    if not aug.enabled:
        steps: list[Any] = [
            transforms.Resize(min(size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
        ]
    else:
        steps = [
            transforms.RandomResizedCrop(
                size,
                scale=(aug.crop_scale_min, 1.0),
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue),
        ]
    out: ImageTransform = transforms.Compose([*steps, transforms.ToTensor(), norm])
    return out


# -- dataset ----------------------------------------------------------------------------------


class SampleKey(NamedTuple):
    """What the batch sampler hands the dataset: which image, which text view, which augment."""

    image: int  # flat image index into PlaceTextDataset.samples
    text: int  # 0 = description, 1 = caption
    seed: int  # augmentation seed of this sample


class PlaceTextDataset(Dataset[tuple[Tensor, int, int]]):
    """All images of a list of places; item = (image tensor, text index, place label).

    Texts are returned as an index into `texts` so that the collator can tokenise each
    distinct text once per batch (a batch holds every text K times).
    """

    def __init__(
        self,
        places: Sequence[PlaceRecord],
        transform: ImageTransform,
        use_caption: bool = False,
    ) -> None:
        if not places:
            raise ValueError("a PlaceTextDataset needs at least one place")
        self.places = list(places)
        self.transform = transform
        self.use_caption = use_caption
        self.samples: list[tuple[int, Path]] = []
        self.place_samples: list[list[int]] = []
        for label, place in enumerate(self.places):
            start = len(self.samples)
            self.samples.extend((label, path) for path in place.images)
            self.place_samples.append(list(range(start, len(self.samples))))
        # texts[2 * label] = description, texts[2 * label + 1] = caption
        self.texts: list[str] = [t for p in self.places for t in (p.description, p.caption)]

    @property
    def n_text_views(self) -> int:
        return 2 if self.use_caption else 1

    def __len__(self) -> int:
        return len(self.samples)

    def image_labels(self) -> Tensor:
        return torch.tensor([label for label, _ in self.samples], dtype=torch.long)

    def load_image(self, index: int) -> Tensor:
        with Image.open(self.samples[index][1]) as im:
            return self.transform(im.convert("RGB"))

    def __getitem__(self, key: SampleKey | int) -> tuple[Tensor, int, int]:
        if isinstance(key, int):
            key = SampleKey(key, 0, 0)
        label = self.samples[key.image][0]
        if key.text >= self.n_text_views:
            raise IndexError(f"text view {key.text} but use_caption={self.use_caption}")
        # Seeding here instead of relying on global/worker RNG makes each sample's crop and
        # jitter a function of the sampler's decision, hence identical after a resume.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key.seed)
            image = self.load_image(key.image)
        return image, 2 * label + key.text, label


@dataclass
class PlaceBatch:
    """One P x K batch. `text` holds each distinct text once; `text_index` maps every image to
    its row, so the text tower encodes P texts instead of P*K identical ones."""

    images: Tensor  # [P*K, 3, H, W]
    text: TokenizedText  # distinct texts of the batch
    text_index: Tensor  # [P*K] row of `text` paired with each image
    labels: Tensor  # [P*K] place labels
    texts: list[str]  # the distinct texts, for logging/debugging

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PlaceBatch:
        return PlaceBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.text.to(device),
            self.text_index.to(device),
            self.labels.to(device),
            self.texts,
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class PlaceCollator:
    """Stacks images and tokenises the batch's distinct texts with the model's tokenizer."""

    def __init__(self, texts: Sequence[str], tokenizer: LongTextTokenizer) -> None:
        self.texts = list(texts)
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[tuple[Tensor, int, int]]) -> PlaceBatch:
        images = torch.stack([im for im, _, _ in items])
        text_ids = [t for _, t, _ in items]
        distinct = list(dict.fromkeys(text_ids))
        row = {t: i for i, t in enumerate(distinct)}
        texts = [self.texts[t] for t in distinct]
        return PlaceBatch(
            images=images,
            text=self.tokenizer(texts),
            text_index=torch.tensor([row[t] for t in text_ids], dtype=torch.long),
            labels=torch.tensor([lbl for _, _, lbl in items], dtype=torch.long),
            texts=texts,
        )


# -- sampler ----------------------------------------------------------------------------------


class PlaceBatchSampler(Sampler[list[SampleKey]]):
    """P places x K views per batch, sharded over ranks by place.

    Each epoch permutes the places with (seed, epoch); the permutation is cut to a multiple of
    world_size * P so every rank runs the same number of steps (DDP needs that), and rank r
    takes every world_size-th place, so shards are disjoint. A place with fewer than K views
    contributes all of them plus repeats drawn with replacement (the augmentation makes the
    repeats differ). Views, text choice and augmentation seeds depend on (seed, epoch, place)
    only, not on the rank or on where iteration started.
    """

    def __init__(
        self,
        place_sizes: Sequence[int],
        places_per_batch: int,
        views_per_place: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        n_text_views: int = 1,
        caption_prob: float = 0.0,
    ) -> None:
        if places_per_batch < 2:
            raise ValueError("P must be >= 2: the losses need other places as negatives")
        if views_per_place < 1:
            raise ValueError("K must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if any(n < 1 for n in place_sizes):
            raise ValueError("every place needs at least one image")
        self.place_sizes = list(place_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.place_sizes)[:-1]]).astype(int)
        self.P = places_per_batch
        self.K = views_per_place
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.n_text_views = n_text_views
        self.caption_prob = caption_prob if n_text_views > 1 else 0.0
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.place_sizes)} places cannot fill one batch of P={self.P} on each of "
                f"{world_size} rank(s)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.place_sizes) // (self.P * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch's permutation and skip the batches a resumed run already saw."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def epoch_places(self, epoch: int) -> list[list[int]]:
        """The place labels of each of this rank's batches in `epoch`."""
        perm = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.place_sizes))
        usable = self.batches_per_epoch * self.P * self.world_size
        shard = perm[:usable][self.rank :: self.world_size]
        return [shard[b * self.P : (b + 1) * self.P].tolist() for b in range(len(shard) // self.P)]

    def _views(self, place: int) -> list[SampleKey]:
        rng = np.random.default_rng([self.seed, self.epoch, 1, place])
        n = self.place_sizes[place]
        if n >= self.K:
            views = rng.choice(n, self.K, replace=False)
        else:
            views = np.concatenate([rng.permutation(n), rng.choice(n, self.K - n, replace=True)])
        texts = (rng.random(self.K) < self.caption_prob).astype(int)
        seeds = rng.integers(0, 2**31 - 1, size=self.K)
        base = int(self.offsets[place])
        return [
            SampleKey(base + int(v), int(t), int(s))
            for v, t, s in zip(views, texts, seeds, strict=True)
        ]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for places in self.epoch_places(self.epoch)[self.start_batch :]:
            yield [key for place in places for key in self._views(place)]
