"""Fitting the calibration on the validation city: presence (Platt scaling per category)
and a temperature per attribute head and street head (`decode.Calibration`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import CityData
from .decode import Calibration
from .model import EvidenceHeads, HeadOutputs, pool_attribute
from .validation import read_city, slice_outputs, visible_elements
from .vocab import LabelVocab


def fit_platt(raw: np.ndarray, present: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """(a, b) minimising the BCE of sigmoid(a * logit(raw) + b), lightly pulled to (1, 0)."""
    z = torch.from_numpy(
        np.log(np.clip(raw, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(raw, 1e-6, 1 - 1e-6))
    )
    y = torch.from_numpy(present.astype(np.float64))
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        loss = loss + l2 * ((ab[0] - 1) ** 2 + ab[1] ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return float(a), float(b)


TEMPERATURES = np.geomspace(0.1, 10.0, 41)
"""Searched softmax temperatures. Attention-pooled attribute logits come out over-confident
(fitted temperatures 1.6-4 on Valburg, 4 for fountain shape and lamp-post count), the
street heads under-confident (0.25-0.45): the grid spans both with room."""


def fit_calibration(
    model: EvidenceHeads, out: HeadOutputs, data: CityData, vocab: LabelVocab
) -> Calibration:
    """Platt scaling of presence per category, and one temperature per attribute head and
    street head (grid search on the validation log-likelihood of the pooled distribution)."""
    base = read_city(model, out, data, Calibration())
    raw = np.stack([r.raw_presence for r in base])
    presence = {
        cat: fit_platt(raw[:, k], data.targets.present[:, k])
        for k, cat in enumerate(vocab.categories)
        if data.targets.present[:, k].any()
    }
    elements = visible_elements(data.targets, vocab)
    temperature: dict[str, float] = {}
    for attr in vocab.attributes:
        cases = np.array(
            [(el.image, el.category, el.values[attr]) for el in elements if attr in el.values]
        )
        if not len(cases):
            continue
        nlls = []
        for t in TEMPERATURES:
            lp = _pooled(model, out, attr, float(t))  # (N, K, V) log-probabilities
            nlls.append(-float(lp[cases[:, 0], cases[:, 1], cases[:, 2]].clamp_min(-20).mean()))
        temperature[attr] = float(TEMPERATURES[int(np.argmin(nlls))])
    for attr in vocab.street:
        target = data.targets.street[attr]
        keep = target >= 0
        logits = out.street[attr][torch.from_numpy(keep)]
        y = torch.from_numpy(target[keep])
        nlls = [float(F.cross_entropy(logits / float(t), y)) for t in TEMPERATURES]
        temperature[f"street.{attr}"] = float(TEMPERATURES[int(np.argmin(nlls))])
    return Calibration(presence=presence, temperature=temperature)


@torch.no_grad()
def _pooled(model: EvidenceHeads, out: HeadOutputs, attr: str, temperature: float) -> torch.Tensor:
    """(N, K, V) log-probabilities of `attr` per image and category, as the decoder pools
    them (for the temperature search)."""
    parts = []
    for s in range(0, out.classes.shape[0], 128):
        part = slice_outputs(out, slice(s, s + 128))
        log_p = torch.log(torch.softmax(part.classes.float(), 1)[:, 1:].clamp_min(1e-6))
        logits = part.attributes[attr].float()
        allowed = model.allowed(attr)[1:].unsqueeze(0).expand(logits.shape[0], -1, -1)
        parts.append(pool_attribute(logits, log_p, allowed, part.attention.get(attr), temperature))
    return torch.cat(parts)
