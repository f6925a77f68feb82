"""Fitting the calibration on the validation city: presence (Platt scaling per category),
a temperature per attribute head and street head, and the fusion of the sign reader's
building kinds into presence (`fit_kinds`) (`decode.Calibration`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import CityData
from .decode import Calibration, logit
from .model import EvidenceHeads, HeadOutputs, category_log_weights, pool_attribute
from .validation import read_city, slice_outputs, visible_elements
from .vocab import LabelVocab


def fit_platt(raw: np.ndarray, present: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """(a, b) minimising the BCE of sigmoid(a * logit(raw) + b), lightly pulled to (1, 0)."""
    a, b = _fit_logistic(logit(raw)[:, None], present, prior=(1.0, 0.0), l2=l2)
    return a, b


def fit_kinds(
    presence: np.ndarray,
    scores: np.ndarray,
    present: np.ndarray,
    place_ids: Sequence[str],
    categories: Sequence[str],
    l2: float = 1e-3,
) -> dict[str, tuple[float, float, float]]:
    """Per category with reader scores, (w_heads, w_reader, bias) of the logistic fusion
    `Calibration.fuse_kinds`, fitted on places: each place's largest calibrated presence
    and largest kind score over its images (N, K each) against whether any of its images
    shows the category (`present`, N x K). Fitted on places, applied per image, because the
    robot's place evidence is the largest over its views (`knowledge.py`): the fusion must
    tell which places have the kind, whichever view shows it. Categories without reader
    scores, or whose places are all alike, are left to the heads."""
    order = {p: i for i, p in enumerate(dict.fromkeys(place_ids))}
    group = np.array([order[p] for p in place_ids])
    n = len(order)

    def per_place(x: np.ndarray) -> np.ndarray:
        out = np.full((n, x.shape[1]), -np.inf)
        np.maximum.at(out, group, x)
        return out

    h, r, y = per_place(presence), per_place(scores), per_place(present.astype(np.float64))
    fitted: dict[str, tuple[float, float, float]] = {}
    for k, cat in enumerate(categories):
        if not (r[:, k] > 0).any() or y[:, k].min() == y[:, k].max():
            continue
        x = np.stack([logit(h[:, k]), logit(r[:, k])], axis=1)
        w_heads, w_reader, bias = _fit_logistic(x, y[:, k], prior=(1.0, 0.0, 0.0), l2=l2)
        fitted[cat] = (w_heads, w_reader, bias)
    return fitted


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, prior: tuple[float, ...], l2: float
) -> tuple[float, ...]:
    """The weights of x's d columns, then the bias, minimising the BCE of sigmoid(x @ w + b),
    pulled lightly to `prior` (d + 1 numbers; for Platt scaling and the kind fusion, what
    leaves the heads' presence as it is)."""
    d = x.shape[1]
    xt = torch.from_numpy(x.astype(np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    p0 = torch.tensor(prior, dtype=torch.float64)
    w = p0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w[:d] + w[d], yt)
        loss = loss + l2 * ((w - p0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return tuple(float(v) for v in w.detach().tolist())


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
        log_p = category_log_weights(part.classes)
        logits = part.attributes[attr].float()
        allowed = model.allowed(attr)[1:].unsqueeze(0).expand(logits.shape[0], -1, -1)
        parts.append(pool_attribute(logits, log_p, allowed, part.attention.get(attr), temperature))
    return torch.cat(parts)
