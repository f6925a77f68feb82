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


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-normalise, leaving all-zero rows at zero instead of producing NaNs."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
