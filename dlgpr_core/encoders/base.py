"""The contract every image-text encoder of the project fulfils.

The map database and the query path only see this protocol, so that the default
two-tower encoder, a plain open_clip model and (later) the CMPL retriever are
interchangeable, and so that a map refuses queries from an encoder it was not built with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Encoder(Protocol):
    """Maps images and texts into one L2-normalised embedding space."""

    @property
    def fingerprint(self) -> str:
        """Identifies architecture *and* weights; two encoders with equal fingerprints
        produce comparable embeddings. Stored in every map built with this encoder."""
        ...

    @property
    def dim(self) -> int:
        """Embedding width."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return a float32 array of shape (len(images), dim), rows L2-normalised."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), rows L2-normalised."""
        ...


@runtime_checkable
class FineEncoder(Encoder, Protocol):
    """An encoder whose global embedding is only the first, cheap pass (CMPL).

    The map stores each image's fine features (`encode_images_with_fine`), so a text query
    re-ranks its FAISS top-N with `fine_scores` without decoding or encoding any image; the
    final score of an image is its global cosine plus `fine_scores`.
    """

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        """(levels, query tokens, width) of one image's fine features."""
        ...

    def encode_images_fine(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float16 array (len(images), *fine_shape)."""
        ...

    def encode_images_with_fine(
        self, images: Sequence[Image.Image]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs of one forward pass: `encode_images` and `encode_images_fine`."""
        ...

    def encode_texts_with_fine(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Global float32 (n, dim) and fine float32 (n, *fine_shape) text features."""
        ...

    def fine_scores(self, text: str | np.ndarray, fine: np.ndarray) -> np.ndarray:
        """float32 (len(fine),): the fine part of the retrieval score of one query (a text,
        or its fine features from `encode_texts_with_fine`) against stored image features."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-normalise, leaving all-zero rows at zero instead of producing NaNs."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
