"""The cosine that CMPL scores with and trains on, for global and fine (query-token) features.

Its own module because the model (`CMPL.score`), the losses and the map-side encoder all use
the same formula, and none of them should have to import another to get it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pairwise_similarity"]


def pairwise_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine matrix [A, B] for global [N, D] or fine [N, Q, D] features (mean over queries)."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    if a.ndim == 2:
        return a @ b.t()
    if a.ndim == 3:
        return torch.einsum("iqd,jqd->ij", a, b) / a.shape[1]
    raise ValueError(f"expected [N, D] or [N, Q, D] features, got {tuple(a.shape)}")
