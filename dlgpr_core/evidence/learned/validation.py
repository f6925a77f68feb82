"""Scoring heads on the validation city: the selection metric and the readings it uses.

`validation_metrics` is deliberately simple and fast (it runs after every epoch): presence
F1 and per-attribute accuracy conditional on the category. The full per-type precision and
recall table is `dlgpr_core.evaluation.evidence_quality` (which this package may not
import: evaluation sits above it); ``training/train_evidence.py`` writes it for the
validation city after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import CityData, batches
from .decode import Calibration, ImageReading, read_outputs
from .model import EvidenceHeads, HeadOutputs
from .targets import IGNORE, CityTargets
from .vocab import LabelVocab


@torch.no_grad()
def city_outputs(model: EvidenceHeads, data: CityData, batch_size: int = 64) -> HeadOutputs:
    """The heads' outputs for every image of a city, concatenated (eval mode)."""
    model.eval()
    outs = [model(b.features) for b in batches(data, batch_size)]
    return HeadOutputs(
        classes=torch.cat([o.classes for o in outs]),
        attributes={a: torch.cat([o.attributes[a] for o in outs]) for a in outs[0].attributes},
        attention={a: torch.cat([o.attention[a] for o in outs]) for a in outs[0].attention},
        street={a: torch.cat([o.street[a] for o in outs]) for a in outs[0].street},
    )


def slice_outputs(out: HeadOutputs, s: slice) -> HeadOutputs:
    return HeadOutputs(
        out.classes[s],
        {a: v[s] for a, v in out.attributes.items()},
        {a: v[s] for a, v in out.attention.items()},
        {a: v[s] for a, v in out.street.items()},
    )


def read_city(
    model: EvidenceHeads,
    out: HeadOutputs,
    data: CityData,
    calibration: Calibration,
    boxes: bool = False,
    signs: torch.Tensor | None = None,
) -> list[ImageReading]:
    size = data.targets.size
    readings: list[ImageReading] = []
    for s in range(0, len(data), 128):
        part = slice_outputs(out, slice(s, s + 128))
        n = part.classes.shape[0]
        sg = None if signs is None else signs[s : s + 128]
        readings += read_outputs(part, model, calibration, [size] * n, None, boxes, sg)
    return readings


@dataclass
class GroundTruthElement:
    image: int
    category: int
    """Index into vocab.categories."""
    values: dict[str, int]
    """attribute -> index of the value in the attribute head (vocab.attributes[attr])."""
    element: int = -1
    """Its index in the place's elements (the value of its cells in `targets.elements`)."""


def visible_elements(targets: CityTargets, vocab: LabelVocab) -> list[GroundTruthElement]:
    """Every element owning cells in some image, with its slot values (for the score)."""
    out: list[GroundTruthElement] = []
    for i in range(len(targets)):
        el = targets.elements[i]
        for e in np.unique(el[el >= 0]):
            r, c = np.argwhere(el == e)[0]
            k = int(targets.classes[i, r, c]) - 1
            values = {
                attr: int(targets.attributes[attr][i, r, c])
                for attr in vocab.category_values[vocab.categories[k]]
                if int(targets.attributes[attr][i, r, c]) != IGNORE
            }
            out.append(GroundTruthElement(i, k, values, int(e)))
    return out


def validation_metrics(
    readings: Sequence[ImageReading], targets: CityTargets, vocab: LabelVocab
) -> dict[str, float]:
    """Presence F1 (image level, P >= 0.5) and per-attribute accuracy of the argmax for
    visible elements (conditional on the category: whether it was detected is presence's
    job), plus street accuracy. ``score`` (the selection metric) is the mean of the
    presence F1 and the mean attribute accuracy."""
    pred = np.stack([r.presence for r in readings]) >= 0.5
    gt = targets.present
    tp = float((pred & gt).sum())
    precision = tp / max(1.0, float(pred.sum()))
    recall = tp / max(1.0, float(gt.sum()))
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    metrics: dict[str, float] = {
        "presence_precision": precision,
        "presence_recall": recall,
        "presence_f1": f1,
    }
    hits: dict[str, list[bool]] = {}
    for el in visible_elements(targets, vocab):
        cat = vocab.categories[el.category]
        for attr, v in el.values.items():
            dist = readings[el.image].attributes[cat][attr]
            best = vocab.category_values[cat][attr][int(np.argmax(dist))]
            hits.setdefault(attr, []).append(best == vocab.attributes[attr][v])
    for attr in vocab.attributes:
        if attr in hits:
            metrics[f"acc_{attr}"] = float(np.mean(hits[attr]))
    for attr in vocab.street:
        t = targets.street[attr]
        ok = [int(np.argmax(r.street[attr])) == int(v) for r, v in zip(readings, t, strict=True)]
        metrics[f"acc_street_{attr}"] = float(
            np.mean([o for o, v in zip(ok, t, strict=False) if v >= 0])
        )
    accs = [metrics[f"acc_{a}"] for a in vocab.attributes if f"acc_{a}" in metrics]
    metrics["attribute_accuracy"] = float(np.mean(accs)) if accs else 0.0
    metrics["score"] = 0.5 * f1 + 0.5 * metrics["attribute_accuracy"]
    return metrics
