"""On-disk caches of the frozen towers' outputs, so training never runs a tower.

Two stores, both keyed by the data *and* the tower configuration (`TowerExtractor.image_key`,
`text_key`), so a changed tower, input size, stride or layer set never reuses stale
features, and both written atomically (a crash leaves the previous state, never half a file):

* `ImageFeatureCache`: one directory per image list (a city), the maps at each stride
  (float16), the pooled features and the saliency maps as ``.npy`` files, memory-mapped on
  read. Keyed by the image file names and sizes, so a regenerated city is recomputed. Built
  into ``<name>.tmp-<pid>`` and renamed into place when complete.
* `SegmentStore`: a growing table of text segments (keyed by their SHA-1) and their layer
  features; only segments not in it are computed, and the table file is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from .extract import ImageTowerOutput

log = logging.getLogger(__name__)

META = "meta.json"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class ImageFeatureCache:
    """Frozen image features of one list of images; see the module docstring."""

    def __init__(
        self, directory: Path, name: str, paths: Sequence[Path], tower_key: dict[str, Any]
    ) -> None:
        self.paths = [Path(p) for p in paths]
        # Names and sizes, not full paths: the same data set moved elsewhere keeps its cache.
        listing = [(p.name, p.stat().st_size) for p in self.paths]
        self.key = {"tower": tower_key, "images": _digest(listing), "n": len(self.paths)}
        self.directory = Path(directory) / f"{name}-{_digest(self.key)}"

    def complete(self) -> bool:
        meta = self.directory / META
        if not meta.is_file():
            return False
        return bool(json.loads(meta.read_text(encoding="utf-8")).get("key") == self.key)

    def build(
        self,
        compute: Callable[[list[Image.Image]], ImageTowerOutput],
        batch_size: int = 16,
        progress: bool = True,
        load: Callable[[Path], Image.Image] = _load_rgb,
    ) -> bool:
        """Compute and store every image's features unless complete; True if it computed."""
        if self.complete():
            return False
        tmp = self.directory.with_name(f"{self.directory.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        arrays: dict[str, Any] = {}
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(self.paths),
            desc=f"tower features {self.directory.name}",
            disable=not progress,
        )
        try:
            for start in range(0, len(self.paths), batch_size):
                chunk = [load(p) for p in self.paths[start : start + batch_size]]
                out = compute(chunk)
                parts = {f"s{s}": m for s, m in out.maps.items()}
                parts |= {"pooled": out.pooled, "saliency": out.saliency}
                for name, t in parts.items():
                    if name not in arrays:
                        arrays[name] = np.lib.format.open_memmap(
                            tmp / f"{name}.npy",
                            mode="w+",
                            dtype=np.float16 if name.startswith("s") else np.float32,
                            shape=(len(self.paths), *t.shape[1:]),
                        )
                    arrays[name][start : start + len(chunk)] = t.numpy()
                bar.update(len(chunk))
            for arr in arrays.values():
                arr.flush()
            arrays.clear()
            meta = {"key": self.key, "seconds": round(time.perf_counter() - t0, 1)}
            (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        except BaseException:
            arrays.clear()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            bar.close()
        if self.directory.exists():  # a stale or concurrent copy: the complete one wins
            shutil.rmtree(self.directory)
        tmp.rename(self.directory)
        log.info("%s: %d images in %.0fs", self.directory.name, len(self.paths), meta["seconds"])
        return True

    def load(self, in_memory: bool = False) -> dict[str, np.ndarray]:
        """``s<stride>`` [N, C, H, W] float16, ``pooled`` [N, P], ``saliency`` [N, h, w]."""
        if not self.complete():
            raise FileNotFoundError(f"{self.directory}: cache incomplete; build it first")
        out = {}
        for f in sorted(self.directory.glob("*.npy")):
            arr = np.load(f, mmap_mode="r")
            out[f.stem] = np.array(arr) if in_memory else arr
        return out


def segment_id(segment: str) -> str:
    return hashlib.sha1(segment.encode("utf-8")).hexdigest()


class SegmentStore:
    """Features of text segments, computed once each; see the module docstring."""

    def __init__(self, directory: Path, tower_key: dict[str, Any]) -> None:
        self.file = Path(directory) / f"segments-{_digest(tower_key)}.npz"
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self.feats = np.zeros((0,), np.float16)
        if self.file.is_file():
            with np.load(self.file, allow_pickle=False) as npz:
                self.ids = npz["ids"].tolist()
                self.feats = npz["feats"]
            self.row = {k: i for i, k in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def missing(self, segments: Iterable[str]) -> list[str]:
        return [s for s in dict.fromkeys(segments) if segment_id(s) not in self.row]

    def add(
        self,
        segments: Iterable[str],
        compute: Callable[[list[str]], Tensor],
        batch_size: int = 256,
        progress: bool = True,
    ) -> int:
        """Compute the segments not stored yet and save; returns how many were computed."""
        todo = self.missing(segments)
        if not todo:
            return 0
        todo.sort(key=len)  # length-sorted batches carry little padding
        new: list[np.ndarray] = []
        t0 = time.perf_counter()
        for start in tqdm(
            range(0, len(todo), batch_size), desc="segment features", disable=not progress
        ):
            new.append(compute(todo[start : start + batch_size]).numpy().astype(np.float16))
        stacked = np.concatenate(new)
        self.feats = stacked if not len(self.ids) else np.concatenate([self.feats, stacked])
        for s in todo:
            self.row[segment_id(s)] = len(self.ids)
            self.ids.append(segment_id(s))
        self._save()
        log.info(
            "%d new segments in %.0fs (%d stored)",
            len(todo),
            time.perf_counter() - t0,
            len(self.ids),
        )
        return len(todo)

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f"{self.file.stem}.tmp-{os.getpid()}.npz")
        try:
            np.savez(tmp, ids=np.array(self.ids), feats=self.feats)
            tmp.replace(self.file)
        finally:
            tmp.unlink(missing_ok=True)

    def rows(self, segments: Sequence[str]) -> np.ndarray:
        """Row of each segment in `feats` (all must be stored)."""
        try:
            return np.array([self.row[segment_id(s)] for s in segments], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"segment not in {self.file}; add it first") from err
