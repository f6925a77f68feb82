"""From head outputs to what one image shows: calibrated presence, boxes, attribute
distributions, street distributions (`ImageReading`), and from those to evidence items.

Presence of a category in an image is its largest cell probability, calibrated per category
by Platt scaling fitted on the validation city (the raw maximum over 300 cells is
over-confident for common categories and under-confident for thin ones). An attribute's
distribution for a category pools that category's cells (`model.pool_attribute`, weighted by
the cells' probability of being that category) with a per-attribute temperature, also
fitted on the validation city. Items follow `EvidenceItem`'s semantics: presence =
P(visible), attribute = P(value | category visible), street = P(value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlgpr_core.evidence import slots as slot_defs
from dlgpr_core.evidence.phrases import slot_phrase
from dlgpr_core.mapdb.evidence import Box, EvidenceItem

from .config import DecodeConfig
from .grid import grid_cell_size
from .model import EPS, NEG, EvidenceHeads, HeadOutputs, category_log_weights, pool_attribute
from .signs import SignReader, cut_strips, pool_positions, position_log_weights, strip_rows
from .vocab import LabelVocab

NAME = "name"
"""The attribute the sign reader reads."""
READER = "reader"
"""Calibration key of the reader's temperature."""


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped to [EPS, 1 - EPS] first (the one logit of calibration,
    fitting and fusion alike)."""
    q = np.clip(p, EPS, 1 - EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


@dataclass
class Calibration:
    """Fitted on the validation city (`train.fit_calibration`); identity when empty."""

    presence: dict[str, tuple[float, float]] = field(default_factory=dict)
    """category -> (a, b): P = sigmoid(a * logit(max cell probability) + b)."""
    temperature: dict[str, float] = field(default_factory=dict)
    """attribute (or ``street.<attribute>``) -> softmax temperature."""
    kinds: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """building category -> (w_heads, w_reader, bias): its presence fused with the sign
    reader's reading of the kind (`kind_scores`), P = sigmoid(w_heads * logit(calibrated
    presence) + w_reader * logit(kind score) + bias), fitted on the validation city's places
    (`calibration.fit_kinds`); empty: the heads alone (assets from before it)."""

    def presence_probs(self, raw: np.ndarray, categories: Sequence[str]) -> np.ndarray:
        """(N, K) raw maxima -> calibrated probabilities."""
        z = logit(raw)
        a = np.array([self.presence.get(c, (1.0, 0.0))[0] for c in categories])
        b = np.array([self.presence.get(c, (1.0, 0.0))[1] for c in categories])
        return np.asarray(1.0 / (1.0 + np.exp(-(a * z + b))))

    def fuse_kinds(
        self, presence: np.ndarray, scores: np.ndarray | None, categories: Sequence[str]
    ) -> np.ndarray:
        """(N, K) calibrated presence with the building kinds the reader saw fused in (a
        copy; unchanged without `kinds` or scores)."""
        if not self.kinds or scores is None:
            return presence
        out = np.array(presence, dtype=np.float64, copy=True)
        for k, cat in enumerate(categories):
            w = self.kinds.get(cat)
            if w is not None:
                z = w[0] * logit(presence[:, k]) + w[1] * logit(scores[:, k]) + w[2]
                out[:, k] = 1.0 / (1.0 + np.exp(-z))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "presence": {c: list(ab) for c, ab in self.presence.items()},
            "temperature": dict(self.temperature),
            "kinds": {c: list(w) for c, w in self.kinds.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """From `to_json`'s form; a malformed entry raises a ValueError naming it (an asset
        edited by hand must not fail with an unpacking error deep in the annotator)."""
        return cls(
            presence={c: (v[0], v[1]) for c, v in _entries(data, "presence", 2, "[a, b]").items()},
            temperature={
                k: v[0] for k, v in _entries(data, "temperature", None, "a number > 0").items()
            },
            kinds={
                c: (v[0], v[1], v[2])
                for c, v in _entries(data, "kinds", 3, "[w_heads, w_reader, bias]").items()
            },
        )


def _entries(
    data: Mapping[str, Any], section: str, n: int | None, form: str
) -> dict[str, list[float]]:
    """The calibration section `section` as name -> n finite numbers (`n` None: one positive
    number, not in a list), or a ValueError naming the first bad entry."""
    got = data.get(section, {})
    if not isinstance(got, Mapping):
        raise ValueError(
            f"calibration.{section} must map names to {form}, got {type(got).__name__}: "
            "fix the entry or write the asset again with training/train_evidence.py"
        )
    out: dict[str, list[float]] = {}
    for name, value in got.items():
        items = [value] if n is None else value
        try:
            nums = [float(x) for x in items]
        except (TypeError, ValueError):
            nums = []
        ok = (
            len(nums) == (n or 1)
            and (n is not None or isinstance(value, (int, float)))
            and all(math.isfinite(x) for x in nums)
            and (n is not None or nums[0] > 0)
        )
        if not ok:
            raise ValueError(
                f"calibration.{section}[{name!r}] = {value!r} is not {form}: fix the entry "
                "or write the asset again with training/train_evidence.py"
            )
        out[str(name)] = nums
    return out


def raw_presence(outputs: HeadOutputs) -> np.ndarray:
    """(B, K) each category's largest cell probability per image (what `Calibration`
    calibrates)."""
    return torch.softmax(outputs.classes.float(), 1)[:, 1:].flatten(2).amax(-1).cpu().numpy()


@dataclass
class ImageReading:
    """What the heads say about one image, before any threshold."""

    width: int
    height: int
    raw_presence: np.ndarray
    """(K,) largest cell probability per category."""
    presence: np.ndarray
    """(K,) calibrated P(visible)."""
    boxes: list[Box]
    """Per category: the box of its cells (the likeliest cell when no cell is its argmax)."""
    attributes: dict[str, dict[str, np.ndarray]]
    """category -> attribute -> probabilities over ``vocab.category_values[category][attr]``
    (only for the categories read, see `read_outputs`)."""
    street: dict[str, np.ndarray]
    """street attribute -> probabilities over ``vocab.street[attr]``."""


def _boxes(probs: torch.Tensor, width: int, height: int) -> list[Box]:
    """probs (K + 1, H, W) -> a box per category (index 0 = first category)."""
    k1, rows, cols = probs.shape
    sx, sy = grid_cell_size(width, height, rows, cols)
    argmax = probs.argmax(0)
    out: list[Box] = []
    for k in range(1, k1):
        mask = argmax == k
        if not bool(mask.any()):
            flat = int(probs[k].argmax())
            mask = torch.zeros_like(mask)
            mask.view(-1)[flat] = True
        ys, xs = torch.nonzero(mask, as_tuple=True)
        x0 = math.floor(int(xs.min()) * sx)
        y0 = math.floor(int(ys.min()) * sy)
        x1 = min(width, math.ceil((int(xs.max()) + 1) * sx))
        y1 = min(height, math.ceil((int(ys.max()) + 1) * sy))
        out.append((x0, y0, x1, y1))
    return out


@torch.no_grad()
def read_outputs(
    outputs: HeadOutputs,
    model: EvidenceHeads,
    calibration: Calibration,
    sizes: Sequence[tuple[int, int]],
    floor: float | None = None,
    boxes: bool = True,
    signs: torch.Tensor | None = None,
    presence: np.ndarray | None = None,
) -> list[ImageReading]:
    """One `ImageReading` per image of the batch; `sizes` are (width, height). Attributes
    are read for categories whose calibrated presence is >= `floor` (None: all). `signs`:
    the sign reader's name logits (B, K, names) from `sign_logits`, combined with the heads'
    name distribution as ``model.config.reader.combine`` says (rows of zeros = not read).
    `presence`: the calibrated presence (B, K) the caller already computed, e.g. with the
    reader's building kinds fused in (`Calibration.fuse_kinds`); None: calibrated here."""
    vocab = model.vocab
    probs = torch.softmax(outputs.classes.float(), dim=1)  # (B, K+1, H, W)
    raw = probs[:, 1:].flatten(2).amax(-1).cpu().numpy()  # (B, K)
    if presence is None:
        presence = calibration.presence_probs(raw, vocab.categories)
    # `category_log_weights`, from the probabilities the boxes and raw presence also use
    log_p = torch.log(probs[:, 1:].clamp_min(EPS))  # (B, K, H, W): one group per category
    pooled: dict[str, np.ndarray] = {}
    for attr, logits in outputs.attributes.items():
        allowed = model.allowed(attr)[1:].unsqueeze(0).expand(logits.shape[0], -1, -1)
        att = outputs.attention.get(attr)
        lp = pool_attribute(
            logits.float(),
            log_p,
            allowed,
            None if att is None else att.float(),
            calibration.temperature.get(attr, 1.0),
        )
        if attr == NAME and signs is not None:
            lp = combine_names(lp, signs, allowed, calibration, model.config.reader.combine)
        pooled[attr] = lp.exp().cpu().numpy()  # (B, K, V)
    street = {
        a: torch.softmax(lg.float() / calibration.temperature.get(f"street.{a}", 1.0), -1)
        .cpu()
        .numpy()
        for a, lg in outputs.street.items()
    }
    out: list[ImageReading] = []
    for b, (width, height) in enumerate(sizes):
        attrs: dict[str, dict[str, np.ndarray]] = {}
        for k, cat in enumerate(vocab.categories):
            if floor is not None and presence[b, k] < floor:
                continue
            per: dict[str, np.ndarray] = {}
            for attr, values in vocab.category_values[cat].items():
                idx = [vocab.value_index(attr, v) for v in values]
                d = pooled[attr][b, k, idx]
                per[attr] = d / max(float(d.sum()), EPS)
            attrs[cat] = per
        out.append(
            ImageReading(
                width=width,
                height=height,
                raw_presence=raw[b],
                presence=presence[b],
                boxes=_boxes(probs[b].cpu(), width, height) if boxes else [],
                attributes=attrs,
                street={a: s[b] for a, s in street.items()},
            )
        )
    return out


def combine_names(
    heads: torch.Tensor,
    signs: torch.Tensor,
    allowed: torch.Tensor,
    calibration: Calibration,
    how: str,
) -> torch.Tensor:
    """Name log-probabilities (B, K, V) from the heads' and the reader's; rows the reader did
    not read (all-zero logits) keep the heads' distribution."""
    mask = torch.where(allowed, 0.0, NEG)
    reader = torch.log_softmax(signs / calibration.temperature.get(READER, 1.0) + mask, -1)
    both = reader if how == "reader" else torch.log_softmax(heads + reader, -1)
    read = (signs != 0).any(-1, keepdim=True)
    return torch.where(read, both, heads)


def _sign_strips(
    reader: SignReader, images: torch.Tensor, outputs: HeadOutputs, which: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The strip each image is read along (`sign_logits`, `kind_scores`): at the median peak
    row of the name attention over the categories in `which` (B, K). Returns log P(category)
    per cell (B, K, H, W), each image's strip row (B,), whether it has one (B,), the indices
    of those that have one, and their strips."""
    _, _, rows, cols = outputs.classes.shape
    log_p = category_log_weights(outputs.classes)
    row, has = strip_rows(outputs.attention[NAME].float(), log_p, which)
    imgs = torch.nonzero(has).flatten()
    height, width = images.shape[-2:]
    _, sy = grid_cell_size(width, height, rows, cols)
    centres = ((row[imgs].float() + 0.5) * sy).long()
    strips = cut_strips(images[imgs], centres, reader.config.strip_height)
    return log_p, row, has, imgs, strips


@torch.no_grad()
def sign_logits(
    model: EvidenceHeads, images: torch.Tensor, outputs: HeadOutputs, which: torch.Tensor
) -> torch.Tensor | None:
    """The reader's name logits (B, K, names) for the (image, category) pairs in `which`
    (B, K) bool; zeros elsewhere. None when the model has no reader. One strip per image,
    at the median peak row of the name attention over the categories read; a category's
    name pools the strip's positions by log P(category) along the strip's grid row."""
    reader = model.reader
    if reader is None or NAME not in outputs.attention:
        return None
    b, k1 = outputs.classes.shape[:2]
    out = outputs.classes.new_zeros((b, k1 - 1, len(model.vocab.attributes[NAME])))
    if not bool(which.any()):
        return out
    log_p, row, has, imgs, strips = _sign_strips(reader, images, outputs, which)
    logits, attention = reader(strips)
    local = torch.full((b,), -1, dtype=torch.long)
    local[imgs] = torch.arange(len(imgs))
    pairs = torch.nonzero(which & has.unsqueeze(1), as_tuple=False)
    lw = log_p[pairs[:, 0], pairs[:, 1], row[pairs[:, 0]]]  # (G, cols)
    pooled = pool_positions(
        logits, attention, local[pairs[:, 0]], position_log_weights(lw, logits.shape[-1])
    )
    out[pairs[:, 0], pairs[:, 1]] = pooled.float()
    return out


@torch.no_grad()
def kind_scores(
    model: EvidenceHeads, images: torch.Tensor, outputs: HeadOutputs
) -> np.ndarray | None:
    """(B, K) per image and category, the reader's strongest reading of any of that
    category's names anywhere along the image's sign strip: the largest, over the strip's
    positions, of P(name) x sigmoid(attention), then over the category's names (0 for a
    category without names). None without a reader.

    The reader predicts over every building's names and names are distinct per kind, so
    this says which kinds of building the image shows, which the heads, seeing the sign on a
    16-pixel grid, tell poorly. One strip per image, at the median peak row of the name
    attention over every named category (`sign_logits` places it over the categories it
    reads)."""
    reader = model.reader
    if reader is None or NAME not in outputs.attention:
        return None
    vocab = model.vocab
    b = outputs.classes.shape[0]
    scores = np.zeros((b, len(vocab.categories)))
    named = torch.tensor([NAME in vocab.category_values[c] for c in vocab.categories])
    if b == 0 or not bool(named.any()):
        return scores
    # every named category is in `which`, so every image has a strip, in order
    *_, strips = _sign_strips(reader, images, outputs, named.expand(b, -1))
    logits, attention = reader(strips)
    read = torch.softmax(logits.float(), 1) * torch.sigmoid(attention.float()).unsqueeze(1)
    best = read.amax(-1).cpu().numpy()  # (B, names)
    column = {v: j for j, v in enumerate(vocab.attributes[NAME])}
    for k, cat in enumerate(vocab.categories):
        idx = [column[v] for v in vocab.category_values[cat].get(NAME, ()) if v in column]
        if idx:
            scores[:, k] = best[:, idx].max(axis=1)
    return scores


def _likeliest(
    values: Sequence[str], probs: np.ndarray, decode: DecodeConfig
) -> list[tuple[str, float]]:
    """The likeliest values until `decode.cumulative` mass, at most `decode.max_values`."""
    order = np.argsort(-probs, kind="stable")
    out: list[tuple[str, float]] = []
    mass = 0.0
    for i in order[: decode.max_values]:
        p = float(probs[i])
        if p < decode.min_value and out:
            break
        out.append((values[int(i)], min(1.0, max(0.0, p))))
        mass += p
        if mass >= decode.cumulative:
            break
    return out


def reading_items(
    reading: ImageReading, vocab: LabelVocab, decode: DecodeConfig
) -> list[EvidenceItem]:
    """Evidence items of one image. Only slots the robot's current ontology knows are
    emitted (an asset trained on a larger vocabulary never invents categories)."""
    known = slot_defs.slots()
    items: list[EvidenceItem] = []
    for k, cat in enumerate(vocab.categories):
        p = float(reading.presence[k])
        if p < decode.presence_floor or cat not in known:
            continue
        box = reading.boxes[k] if reading.boxes else None
        items.append(
            EvidenceItem(
                slot_phrase(cat, slot_defs.PRESENCE, cat),
                min(1.0, max(0.0, p)),
                cat,
                slot_defs.PRESENCE,
                cat,
                box,
            )
        )
        for attr, probs in reading.attributes.get(cat, {}).items():
            own = set(slot_defs.values(cat, attr))
            for value, q in _likeliest(vocab.category_values[cat][attr], probs, decode):
                if value in own:
                    items.append(
                        EvidenceItem(slot_phrase(cat, attr, value), q, cat, attr, value, box)
                    )
    street_own = known[slot_defs.STREET].attributes if slot_defs.STREET in known else {}
    for attr, probs in reading.street.items():
        for value, q in _likeliest(vocab.street[attr], probs, decode):
            if value in street_own.get(attr, ()):
                items.append(
                    EvidenceItem(
                        slot_phrase(slot_defs.STREET, attr, value),
                        q,
                        slot_defs.STREET,
                        attr,
                        value,
                    )
                )
    return items
