"""Frozen spatial features of the dlgpr-lite image tower, at the image's native resolution.

The evidence heads sit on the very EfficientNet-Lite0 trunk the default encoder uses (built
and loaded by `dlgpr_core.encoders.towers.build_image_trunk`, so there is one loading path).
They read the trunk's feature maps at strides 8, 16 and 32 instead of its pooled vector: the
things a person names (a mailbox, a door colour, a sign) are a few pixels wide at 320x240, and
a 224x224 squash or a global pool would discard exactly them. The trunk is frozen, so its
features are computed once per image and cached for training (`FeatureCache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from dlgpr_core.encoders.factory import DEFAULT_CONFIG
from dlgpr_core.encoders.towers import TowerConfig, build_image_trunk, weight_identities

STRIDES = (4, 8, 16, 32)
"""The trunk outputs the heads may read: the last block of each of these output strides."""


@dataclass(frozen=True)
class TowerInfo:
    """What identifies the frozen features (part of the cache key and of the asset)."""

    config_name: str
    timm_model: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: list[dict[str, Any]]

    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class FrozenTower(nn.Module):
    """The pretrained trunk up to its last block, returning one map per stride in `STRIDES`.

    Images keep their own size (no resize, no crop): the trunk's TF-style "same" padding
    accepts any size, and a stride-16 grid of a 320x240 view is 20x15 cells.
    """

    def __init__(self, config: TowerConfig | str | Path = DEFAULT_CONFIG) -> None:
        super().__init__()
        if not isinstance(config, TowerConfig):
            config = TowerConfig.from_file(config)
        trunk, files = build_image_trunk(config)
        self.trunk: Any = trunk  # a timm EfficientNet: conv_stem, bn1, blocks
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        pp = config.preprocess_cfg
        mean = tuple(float(x) for x in pp.get("mean", (0.5, 0.5, 0.5)))
        std = tuple(float(x) for x in pp.get("std", (0.5, 0.5, 0.5)))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.info = TowerInfo(
            config_name=config.name,
            timm_model=str(config.model_cfg["vision_cfg"]["timm_model_name"]),
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            weights=weight_identities(files),
        )
        self._taps = self._find_taps()
        self.eval()

    def _find_taps(self) -> dict[int, int]:
        """stride -> index of the last trunk block at that stride (found by a probe run, so
        the code does not hard-wire EfficientNet-Lite0's stage layout)."""
        x = torch.zeros(1, 3, 64, 64)
        taps: dict[int, int] = {}
        with torch.inference_mode():
            x = self.trunk.bn1(self.trunk.conv_stem(x))
            for i, block in enumerate(self.trunk.blocks):
                x = block(x)
                stride = 64 // x.shape[-1]
                if stride in STRIDES:
                    taps[stride] = i
        missing = [s for s in STRIDES if s not in taps]
        if missing:
            raise RuntimeError(f"trunk {self.info.timm_model} has no block at strides {missing}")
        return taps

    def channels(self) -> dict[int, int]:
        """stride -> channels of its map."""
        return {s: int(self.forward(torch.zeros(1, 3, 64, 64))[s].shape[1]) for s in STRIDES}

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Same-size RGB images -> a normalised batch (the encoder's mean/std, native size)."""
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]
        sizes = {a.shape for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"one batch needs images of one size, got {sorted(sizes)}")
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        return (batch - self.mean) / self.std

    def forward(self, batch: torch.Tensor) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        last = max(self._taps.values())
        x = self.trunk.bn1(self.trunk.conv_stem(batch))
        for i, block in enumerate(self.trunk.blocks):
            x = block(x)
            for stride, tap in self._taps.items():
                if tap == i:
                    out[stride] = x
            if i == last:
                break
        return out

    @torch.inference_mode()
    def features(self, images: Sequence[Image.Image]) -> dict[int, torch.Tensor]:
        return self.forward(self.preprocess(images))


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class FeatureCache:
    """Frozen features of a list of same-size images, as float16 arrays on disk.

    One ``.npy`` per stride, memory-mapped on read so a 4,000-image city (0.9 GB at
    strides 8-32, 0.9 GB more at stride 4) need not sit in memory; keyed by the tower's
    identity and the image list, so a changed tower or data set recomputes instead of
    silently reusing stale features. Only missing strides are computed; an interrupted run
    recomputes them (written to a temporary name, renamed when complete).
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        paths: Sequence[Path],
        tower_key: str,
        strides: Sequence[int] = STRIDES,
    ) -> None:
        self.directory = Path(directory)
        self.strides = sorted(set(strides))
        self.paths = [Path(p) for p in paths]
        # File names, not full paths: the same data set moved elsewhere keeps its cache.
        listing = "\n".join(p.name for p in self.paths).encode()
        self.key = f"{name}-{tower_key}-{hashlib.sha256(listing).hexdigest()[:12]}"

    def file(self, stride: int) -> Path:
        return self.directory / f"{self.key}_s{stride}.npy"

    def missing(self) -> list[int]:
        return [s for s in self.strides if not self.file(s).exists()]

    def complete(self) -> bool:
        return not self.missing()

    def build(
        self,
        tower: FrozenTower,
        batch_size: int = 16,
        progress: bool = True,
        load: Callable[[Path], Image.Image] = _load_rgb,
    ) -> None:
        """Compute the strides not cached yet (one trunk pass serves them all)."""
        todo = self.missing()
        if not todo:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        first = tower.features([load(self.paths[0])])
        arrays: dict[int, np.memmap[Any, Any]] = {}
        tmp = {s: self.file(s).with_suffix(".tmp.npy") for s in todo}
        for s in todo:
            shape = (len(self.paths), *first[s].shape[1:])
            arrays[s] = np.lib.format.open_memmap(tmp[s], mode="w+", dtype=np.float16, shape=shape)
        bar = tqdm(total=len(self.paths), desc=f"features {self.key}", disable=not progress)
        for start in range(0, len(self.paths), batch_size):
            chunk = [load(p) for p in self.paths[start : start + batch_size]]
            feats = tower.features(chunk)
            for s in todo:
                arrays[s][start : start + len(chunk)] = feats[s].numpy().astype(np.float16)
            bar.update(len(chunk))
        bar.close()
        for s in todo:
            arrays[s].flush()
            del arrays[s]
            tmp[s].replace(self.file(s))

    def load(self) -> dict[int, np.ndarray]:
        """stride -> (N, C, H, W) float16, memory-mapped."""
        return {s: np.load(self.file(s), mmap_mode="r") for s in self.strides}
