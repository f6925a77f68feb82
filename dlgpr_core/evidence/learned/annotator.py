"""`LearnedAnnotator`: the shipped offline annotator (`ImageAnnotator` for `MapDatabase.annotate`).

Frozen dlgpr-lite trunk -> evidence heads -> calibrated readings -> evidence items, batched
on the CPU. Its `version` hashes the heads file and the JSON beside it (calibration,
thresholds, vocabulary), so a retrained or recalibrated model re-annotates a map.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file

from dlgpr_core.mapdb.evidence import EvidenceItem

from .config import DecodeConfig, HeadsConfig
from .decode import (
    NAME,
    Calibration,
    kind_scores,
    raw_presence,
    read_outputs,
    reading_items,
    sign_logits,
)
from .features import FrozenTower
from .model import EvidenceHeads
from .vocab import LabelVocab

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
ASSET_JSON = "evidence_lite.json"
ASSET_HEADS = "evidence_lite_heads.safetensors"


class LearnedAnnotator:
    """Evidence from the learned heads. Build with `from_assets` or `from_dir`."""

    name = "learned"

    def __init__(
        self,
        meta: dict[str, Any],
        heads_path: Path,
        *,
        device: str | None = None,
        batch_size: int = 16,
        threads: int | None = None,
    ) -> None:
        if int(meta.get("format", 0)) != 1:
            raise ValueError(f"unknown evidence asset format {meta.get('format')!r}")
        self.meta = meta
        self.device = torch.device(device or "cpu")
        self.batch_size = batch_size
        if threads is not None:
            torch.set_num_threads(threads)
        self.vocab = LabelVocab.from_json(meta["vocab"])
        self.decode = DecodeConfig.model_validate(meta["decode"])
        try:
            self.calibration = Calibration.from_json(meta["calibration"])
        except ValueError as err:
            raise ValueError(f"the evidence asset beside {heads_path}: {err}") from err
        self.tower = FrozenTower().to(self.device)
        channels = {int(s): int(c) for s, c in meta["channels"].items()}
        if channels != self.tower.channels():
            raise ValueError(
                f"{heads_path}: heads trained on trunk channels {channels}, the installed "
                f"trunk gives {self.tower.channels()}"
            )
        self.heads = EvidenceHeads(channels, self.vocab, HeadsConfig.model_validate(meta["heads"]))
        state = load_file(str(heads_path), device="cpu")
        self.heads.load_state_dict(state, strict=True)
        self.heads.to(self.device).eval()
        self._named = torch.tensor(
            [NAME in self.vocab.category_values[c] for c in self.vocab.categories]
        )
        digest = hashlib.sha256(Path(heads_path).read_bytes())
        digest.update(
            json.dumps({k: v for k, v in meta.items() if k != "training"}, sort_keys=True).encode()
        )
        self.version = digest.hexdigest()[:12]

    @classmethod
    def from_dir(cls, directory: str | Path, **options: Any) -> LearnedAnnotator:
        """From a directory holding ``evidence_lite.json`` and its heads (a training run's
        directory, or the package assets)."""
        directory = Path(directory)
        js, heads = directory / ASSET_JSON, directory / ASSET_HEADS
        for p in (js, heads):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: a learned-evidence directory holds {ASSET_JSON} and "
                    f"{ASSET_HEADS} (training/train_evidence.py writes them)"
                )
        return cls(json.loads(js.read_text(encoding="utf-8")), heads, **options)

    @classmethod
    def from_assets(cls, **options: Any) -> LearnedAnnotator:
        """The model shipped with the package."""
        return cls.from_dir(ASSETS, **options)

    @torch.inference_mode()
    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem]]:
        """One item list per image, in order. Images of different sizes are batched by size
        (each at its native resolution)."""
        results: list[list[EvidenceItem]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        rgb = [im.convert("RGB") for im in images]
        for i, im in enumerate(rgb):
            by_size[im.size].append(i)
        for size, idx in by_size.items():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                batch = self.tower.preprocess([rgb[i] for i in chunk]).to(self.device)
                out = self.heads(self.tower(batch))
                kinds = kind_scores(self.heads, batch, out) if self.calibration.kinds else None
                presence = self.calibration.fuse_kinds(
                    self.calibration.presence_probs(raw_presence(out), self.vocab.categories),
                    kinds,
                    self.vocab.categories,
                )
                which = torch.from_numpy(presence >= self.decode.presence_floor) & self._named
                readings = read_outputs(
                    out,
                    self.heads,
                    self.calibration,
                    [size] * len(chunk),
                    floor=self.decode.presence_floor,
                    signs=sign_logits(self.heads, batch, out, which),
                    presence=presence,
                )
                for i, r in zip(chunk, readings, strict=True):
                    results[i] = reading_items(r, self.vocab, self.decode)
        return results


def create_learned_annotator(arg: str = "", **options: Any) -> LearnedAnnotator:
    """For the annotator registry: ``""`` = the shipped assets, else a training run's
    directory (or any directory with the two asset files). Options: device, batch_size,
    threads."""
    return (
        LearnedAnnotator.from_dir(arg, **options)
        if arg
        else LearnedAnnotator.from_assets(**options)
    )
