"""The tower CMPL behind the project's Encoder protocol (``cmpl:<checkpoint dir>``).

Images run through the frozen EfficientNet-Lite0 trunk and the trained heads and fine
branch; texts are cut into segments, each segment through frozen MiniLM, then the heads and
the fine branch. With a fine branch it is a `FineEncoder`: a map stores each image's fine
features (float16) and a text query re-ranks its FAISS top-N with `fine_scores` without
reading any image, exactly the fine term of `TowerCMPL.score`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dlgpr_core.encoders.base import l2_normalise
from dlgpr_core.encoders.checkpoints import sha256_file
from dlgpr_core.encoders.towers import resolve_ref, weight_identities

from ..features import ImageFeatures, TextFeatures
from ..similarity import pairwise_similarity
from .extract import TowerExtractor
from .model import CONFIG_FILE, WEIGHTS_FILE, TowerCMPL, load_tower_cmpl
from .segments import split_segments


def tower_fingerprint(directory: Path, extractor: TowerExtractor) -> str:
    """Trained weights (by content), config, and the towers' weight files (by name and
    size, as dlgpr-lite identifies them): equal only for encoders with equal outputs."""
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    towers = extractor.towers
    files = [
        resolve_ref(str(towers.model_cfg["text_cfg"]["hf_model_name"]), towers.base_dir),
    ]
    if towers.image_tower_weights is not None:
        files.append(resolve_ref(towers.image_tower_weights["path"], towers.base_dir))
    ident = {
        "config": meta,
        "weights": sha256_file(directory / WEIGHTS_FILE),
        "image": extractor.image_key(),
        "text": extractor.text_key(),
        "tower_files": weight_identities(files),
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return f"cmpl-towers-{hashlib.sha256(blob).hexdigest()[:16]}"


class TowerCMPLGlobalEncoder:
    """A tower-CMPL checkpoint as a plain `Encoder` (global embeddings only)."""

    def __init__(
        self,
        model: TowerCMPL,
        extractor: TowerExtractor,
        fingerprint: str,
        batch_size: int = 16,
        device: str | None = None,
    ) -> None:
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        self.extractor = extractor
        self.batch_size = batch_size
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return int(self.model.config.embed_dim)

    def _stack(self, fine: dict[int, torch.Tensor]) -> np.ndarray:
        """Level dict -> [B, levels, Q, d] in `model.levels` order (the score's order)."""
        return torch.stack([fine[lv].float() for lv in self.model.levels], 1).cpu().numpy()

    @torch.inference_mode()
    def _image_features(self, images: Sequence[Image.Image]) -> ImageFeatures:
        out = self.extractor.image_features(images)
        maps = {s: m.to(self.device) for s, m in out.maps.items()}
        return self.model.encode_image(
            maps, out.pooled.to(self.device), out.saliency.to(self.device)
        )

    def _images(self, images: Sequence[Image.Image], fine: bool) -> tuple[np.ndarray, np.ndarray]:
        glob = [np.zeros((0, self.dim), np.float32)]
        fines: list[np.ndarray] = []
        for s in range(0, len(images), self.batch_size):
            feats = self._image_features(images[s : s + self.batch_size])
            glob.append(feats.global_.float().cpu().numpy())
            if fine:
                fines.append(self._stack(feats.fine).astype(np.float16))
        shape = getattr(self, "fine_shape", (0, 0, 0))
        stacked = np.concatenate(fines) if fines else np.zeros((0, *shape), np.float16)
        return l2_normalise(np.concatenate(glob)), stacked

    @torch.inference_mode()
    def _text_features(self, texts: Sequence[str]) -> TextFeatures:
        cut = [
            split_segments(t, self.model.config.segment_words) or [t.strip() or "."] for t in texts
        ]
        distinct = list(dict.fromkeys(s for segs in cut for s in segs))
        feats = torch.cat(
            [
                self.extractor.segment_features(distinct[i : i + 256])
                for i in range(0, len(distinct), 256)
            ]
        )
        row = {s: i for i, s in enumerate(distinct)}
        width = max(len(segs) for segs in cut)
        padded = torch.zeros((len(texts), width, *feats.shape[1:]))
        mask = torch.zeros((len(texts), width), dtype=torch.bool)
        for i, segs in enumerate(cut):
            padded[i, : len(segs)] = feats[[row[s] for s in segs]]
            mask[i, : len(segs)] = True
        return self.model.encode_text(padded.to(self.device), mask.to(self.device))

    def _texts(self, texts: Sequence[str], fine: bool) -> tuple[np.ndarray, np.ndarray]:
        glob = [np.zeros((0, self.dim), np.float32)]
        fines: list[np.ndarray] = []
        for s in range(0, len(texts), 64):
            feats = self._text_features(texts[s : s + 64])
            glob.append(feats.global_.float().cpu().numpy())
            if fine:
                fines.append(self._stack(feats.fine).astype(np.float32))
        shape = getattr(self, "fine_shape", (0, 0, 0))
        stacked = np.concatenate(fines) if fines else np.zeros((0, *shape), np.float32)
        return l2_normalise(np.concatenate(glob)), stacked

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._images(images, fine=False)[0]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._texts(texts, fine=False)[0]


class TowerCMPLEncoder(TowerCMPLGlobalEncoder):
    """A tower-CMPL checkpoint with its fine branch: a `FineEncoder`."""

    def __init__(
        self,
        model: TowerCMPL,
        extractor: TowerExtractor,
        fingerprint: str,
        batch_size: int = 16,
        device: str | None = None,
    ) -> None:
        super().__init__(model, extractor, fingerprint, batch_size, device)
        if not model.levels:
            raise ValueError("this checkpoint has no fine branch; use TowerCMPLGlobalEncoder")
        cfg = model.config
        self._fine_shape = (len(model.levels), int(cfg.n_queries), int(cfg.fine_dim))
        self._weights = [cfg.score_fine_weight * w for w in model.level_weights()]
        self._last_text: tuple[str, np.ndarray] | None = None

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return self._fine_shape

    def encode_images_fine(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._images(images, fine=True)[1]

    def encode_images_with_fine(
        self, images: Sequence[Image.Image]
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._images(images, fine=True)

    def encode_texts_with_fine(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        glob, fine = self._texts(texts, fine=True)
        if len(texts) == 1:  # a map query: fine_scores(text) may follow with the same text
            self._last_text = (texts[0], fine[0])
        return glob, fine

    def fine_scores(self, text: str | np.ndarray, fine: np.ndarray) -> np.ndarray:
        if isinstance(text, str):
            cached = self._last_text
            tfine = (
                cached[1]
                if cached is not None and cached[0] == text
                else self.encode_texts_with_fine([text])[1][0]
            )
        else:
            tfine = np.asarray(text)
        img = torch.from_numpy(np.asarray(fine, dtype=np.float32))
        if img.ndim != 4 or tuple(img.shape[1:]) != self.fine_shape:
            raise ValueError(
                f"fine features of shape {tuple(img.shape)}, expected (n, {self.fine_shape})"
            )
        txt = torch.from_numpy(np.asarray(tfine, dtype=np.float32)).reshape(1, *self.fine_shape)
        out = torch.zeros(img.shape[0])
        for i, w in enumerate(self._weights):
            out += w * pairwise_similarity(img[:, i], txt[:, i])[:, 0]
        return out.numpy().astype(np.float32)


def tower_encoder(
    directory: str | Path, device: str | None = None, batch_size: int = 16
) -> TowerCMPLGlobalEncoder:
    """The encoder of a `save_tower_cmpl` checkpoint (a FineEncoder when its score uses
    the fine branch)."""
    directory = Path(directory)
    model = load_tower_cmpl(directory, device=device or "cpu")
    extractor = TowerExtractor(model.config, device=device)
    fingerprint = tower_fingerprint(directory, extractor)
    if model.levels and model.config.score_fine_weight:
        return TowerCMPLEncoder(model, extractor, fingerprint, batch_size, device)
    return TowerCMPLGlobalEncoder(model, extractor, fingerprint, batch_size, device)
