"""The CMPL retriever behind the project's Encoder protocol, so maps and evaluation use it.

The global embedding (open_clip's pooled, projected token) is what FAISS indexes; the
multi-level fine features are what `CMPL.score` adds on top. Maps store the image side of the
fine features (float16) so a query re-ranks its top-N without recomputing any image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlgpr_core.encoders.base import Encoder, l2_normalise

from .factory import CONFIG_FILE, WEIGHTS_FILE, image_preprocess, load_cmpl
from .model import CMPL
from .similarity import pairwise_similarity

CMPL_PREFIX = "cmpl:"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(directory: str | Path) -> str:
    """Hash of the config and of the weights file: equal only for the same trained model,
    wherever the checkpoint directory lies."""
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    config = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(config.encode("utf-8"))
    h.update(_file_sha256(directory / WEIGHTS_FILE).encode("ascii"))
    return f"cmpl-{h.hexdigest()[:16]}"


class CMPLGlobalEncoder:
    """A CMPL checkpoint as a plain `Encoder` (global embeddings only).

    What a checkpoint without a fine branch (Table 3 "baseline") becomes; `CMPLEncoder` adds
    the fine features when the checkpoint has them.
    """

    def __init__(
        self, model: CMPL, fingerprint: str, batch_size: int = 32, device: str | None = None
    ) -> None:
        self.model = model.to(device or "cpu").eval()
        self.device = torch.device(device or "cpu")
        self.batch_size = batch_size
        self._fingerprint = fingerprint
        self._preprocess = image_preprocess(model)
        visual: Any = model.clip.visual
        self._dim = int(visual.output_dim)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self._dim

    def _image_batches(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        return [
            torch.stack(
                [self._preprocess(im.convert("RGB")) for im in images[s : s + self.batch_size]]
            )
            for s in range(0, len(images), self.batch_size)
        ]

    @torch.inference_mode()
    def _images(self, images: Sequence[Image.Image], fine: bool) -> tuple[np.ndarray, np.ndarray]:
        glob: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)]
        fines: list[np.ndarray] = []
        for batch in self._image_batches(images):
            feats = self.model.encode_image(batch.to(self.device))
            glob.append(feats.global_.float().cpu().numpy())
            if fine:
                fines.append(self._stack(feats.fine).astype(np.float16))
        shape = getattr(self, "fine_shape", (0, 0, 0))
        stacked = np.concatenate(fines) if fines else np.zeros((0, *shape), np.float16)
        return l2_normalise(np.concatenate(glob)), stacked

    def _stack(self, fine: dict[int, torch.Tensor]) -> np.ndarray:
        """Level dict -> [B, levels, Q, d] in `model.levels` order (the score's order)."""
        return torch.stack([fine[lv].float() for lv in self.model.levels], dim=1).cpu().numpy()

    @torch.inference_mode()
    def _texts(self, texts: Sequence[str], fine: bool) -> tuple[np.ndarray, np.ndarray]:
        glob: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)]
        fines: list[np.ndarray] = []
        for s in range(0, len(texts), self.batch_size):
            tok = self.model.tokenize(list(texts[s : s + self.batch_size])).to(self.device)
            feats = self.model.encode_text(tok)
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


class CMPLEncoder(CMPLGlobalEncoder):
    """A CMPL checkpoint with its fine branch: a `FineEncoder`.

    `fine_scores` is exactly the fine term of `CMPL.score` (score_fine_weight times the
    level-weighted mean query-token cosine), so global cosine + fine_scores = CMPL.score up
    to the float16 rounding of the stored image features.
    """

    def __init__(
        self, model: CMPL, fingerprint: str, batch_size: int = 32, device: str | None = None
    ) -> None:
        super().__init__(model, fingerprint, batch_size, device)
        if not model.levels:
            raise ValueError("this CMPL checkpoint has no fine branch; use CMPLGlobalEncoder")
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
        if len(texts) == 1:  # a map query: fine_scores(text) follows with the same text
            self._last_text = (texts[0], fine[0])
        return glob, fine

    def _text_fine(self, text: str) -> np.ndarray:
        if self._last_text is not None and self._last_text[0] == text:
            return self._last_text[1]
        return self.encode_texts_with_fine([text])[1][0]

    @torch.inference_mode()
    def fine_scores(self, text: str | np.ndarray, fine: np.ndarray) -> np.ndarray:
        tfine = self._text_fine(text) if isinstance(text, str) else np.asarray(text)
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


def cmpl_encoder(
    directory: str | Path, device: str | None = None, batch_size: int = 32
) -> CMPLGlobalEncoder:
    """The encoder of a `save_cmpl` checkpoint: a `CMPLEncoder` (FineEncoder) when it has a
    fine branch that the score uses, else global-only."""
    directory = Path(directory)
    model = load_cmpl(directory, device=device or "cpu")
    fingerprint = checkpoint_fingerprint(directory)
    if model.levels and model.config.score_fine_weight:
        return CMPLEncoder(model, fingerprint, batch_size, device)
    return CMPLGlobalEncoder(model, fingerprint, batch_size, device)


def load_cmpl_encoder(
    argument: str, *, checkpoint: str | Path | None = None, device: str | None = None
) -> Encoder:
    """The ``cmpl:<checkpoint dir>`` kind of `create_encoder`, registered as the ``cmpl``
    entry point of the ``dlgpr.encoders`` group (setup.py): the encoders package may not
    import the retriever, so it finds this loader through the registry. A directory written
    by the tower CMPL (`towers.model.save_tower_cmpl`) loads as that encoder."""
    if checkpoint is not None:
        raise ValueError("a cmpl: encoder takes its weights from its directory, not --checkpoint")
    from .towers.model import CHECKPOINT_FORMAT, checkpoint_format

    if checkpoint_format(argument) == CHECKPOINT_FORMAT:  # CMPL on the pretrained towers
        from .towers.encoder import tower_encoder

        return tower_encoder(argument, device=device)
    return cmpl_encoder(argument, device=device)
