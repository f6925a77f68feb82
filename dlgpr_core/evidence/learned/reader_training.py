"""Training the sign reader (`signs.SignReader`) after the heads, on strips they choose.

Each training image gives one strip, cut where the trained heads' name attention peaks
(as the annotator cuts it); each visible named building in it is one example, pooled over
the building's own columns (from the region boxes) and trained with cross-entropy over
every chain name. Selection and the reader's temperature use the validation city, pooled as
the annotator pools: by the heads' category probabilities along the strip.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .calibration import TEMPERATURES
from .config import DecodeConfig, EvidenceTrainConfig
from .dataset import CityData
from .decode import NAME, Calibration, kind_scores, raw_presence, sign_logits
from .features import FrozenTower
from .grid import grid_cell_size
from .model import NEG, EvidenceHeads, HeadOutputs, category_log_weights
from .signs import cut_strips, pool_positions, position_log_weights, strip_rows
from .validation import GroundTruthElement, slice_outputs, visible_elements
from .vocab import LabelVocab

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_images(tower: FrozenTower, paths: Sequence[Path]) -> torch.Tensor:
    loaded = []
    for p in paths:
        with Image.open(p) as im:
            loaded.append(im.convert("RGB"))
    return tower.preprocess(loaded)


def named_categories(vocab: LabelVocab) -> torch.Tensor:
    """(K,) bool: the categories with a sign to read."""
    return torch.tensor([NAME in vocab.category_values[c] for c in vocab.categories])


@torch.no_grad()
def city_signs(
    model: EvidenceHeads,
    out: HeadOutputs,
    data: CityData,
    tower: FrozenTower,
    which: torch.Tensor,
) -> torch.Tensor | None:
    """The reader's logits (N, K, names) for the (image, category) pairs of `which`
    (N, K), as the annotator computes them."""
    if model.reader is None:
        return None
    parts = _by_chunks(
        model, out, data, tower, lambda s, im, part: sign_logits(model, im, part, which[s])
    )
    return torch.cat(parts)


def city_kinds(
    model: EvidenceHeads, out: HeadOutputs, data: CityData, tower: FrozenTower
) -> np.ndarray | None:
    """The reader's kind scores (N, K) of a city's images (`decode.kind_scores`), as the
    annotator computes them."""
    if model.reader is None:
        return None
    parts = _by_chunks(model, out, data, tower, lambda _, im, part: kind_scores(model, im, part))
    return np.concatenate(parts) if parts else np.zeros((0, len(model.vocab.categories)))


def _by_chunks(
    model: EvidenceHeads,
    out: HeadOutputs,
    data: CityData,
    tower: FrozenTower,
    read: Callable[[slice, torch.Tensor, HeadOutputs], T | None],
) -> list[T]:
    """`read`(the chunk's slice, its images, its head outputs) over a city's images in
    chunks of 64, in eval mode (the images are loaded per chunk, never all at once)."""
    model.eval()
    parts = []
    for s in range(0, len(data), 64):
        chunk = slice(s, s + 64)
        got = read(chunk, load_images(tower, data.targets.paths[chunk]), slice_outputs(out, chunk))
        assert got is not None  # the caller checked the model has a reader
        parts.append(got)
    return parts


def read_pairs(
    model: EvidenceHeads, out: HeadOutputs, calibration: Calibration, decode: DecodeConfig
) -> torch.Tensor:
    """(N, K) bool: the (image, category) pairs the annotator reads a sign for: categories
    with a name whose calibrated presence reaches the floor."""
    presence = calibration.presence_probs(raw_presence(out), model.vocab.categories)
    floor = torch.from_numpy(presence >= decode.presence_floor)
    return floor & named_categories(model.vocab).unsqueeze(0)


@dataclass
class SignSamples:
    """Strips and the named buildings in them."""

    strips: torch.Tensor
    """(S, 3, strip_height, width) float16, normalised."""
    strip: torch.Tensor
    """(G,) the strip each building is read from."""
    names: torch.Tensor
    """(G,) index into vocab.attributes["name"]."""
    classes: torch.Tensor
    """(G,) class index (category + 1)."""
    own: torch.Tensor
    """(G, positions) log-weights of the building's own columns (0, else NEG): training."""
    heads: torch.Tensor
    """(G, positions) log P(category) along the strip's row: how the annotator pools."""


@torch.no_grad()
def sign_samples(
    model: EvidenceHeads, out: HeadOutputs, data: CityData, tower: FrozenTower
) -> SignSamples:
    assert model.reader is not None
    vocab = model.vocab
    by_image: dict[int, list[GroundTruthElement]] = {}
    for el in visible_elements(data.targets, vocab):
        if NAME in el.values:
            by_image.setdefault(el.image, []).append(el)
    images = sorted(by_image)
    rows, cols = data.targets.classes.shape[1:]
    width, height = data.targets.size
    _, sy = grid_cell_size(width, height, rows, cols)
    positions = -(-width // 8)
    strips, strip, names, classes, own, heads = [], [], [], [], [], []
    for s in range(0, len(images), 64):
        idx = images[s : s + 64]
        batch = load_images(tower, [data.targets.paths[i] for i in idx])
        log_p = category_log_weights(out.classes[idx])
        which = torch.zeros(len(idx), len(vocab.categories), dtype=torch.bool)
        for j, i in enumerate(idx):
            for el in by_image[i]:
                which[j, el.category] = True
        row, _ = strip_rows(out.attention[NAME][idx].float(), log_p, which)
        centres = ((row.float() + 0.5) * sy).long()
        strips.append(cut_strips(batch, centres, model.reader.config.strip_height).half())
        for j, i in enumerate(idx):
            for el in by_image[i]:
                mine = torch.from_numpy((data.targets.elements[i] == el.element).any(0))
                strip.append(s + j)
                names.append(el.values[NAME])
                classes.append(el.category + 1)
                own.append(position_log_weights(torch.where(mine, 0.0, NEG), positions))
                heads.append(position_log_weights(log_p[j, el.category, row[j]], positions))
    return SignSamples(
        strips=torch.cat(strips),
        strip=torch.tensor(strip),
        names=torch.tensor(names),
        classes=torch.tensor(classes),
        own=torch.stack(own),
        heads=torch.stack(heads),
    )


def _logits(model: EvidenceHeads, samples: SignSamples, log_w: torch.Tensor) -> torch.Tensor:
    """Pooled name logits (G, names) of every building of `samples` (eval mode)."""
    assert model.reader is not None
    model.reader.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(samples.strips), 128):
            logits, att = model.reader(samples.strips[s : s + 128].float())
            sel = (samples.strip >= s) & (samples.strip < s + 128)
            out.append((sel, pool_positions(logits, att, samples.strip[sel] - s, log_w[sel])))
    pooled = torch.zeros(len(samples.strip), len(model.vocab.attributes[NAME]))
    for sel, p in out:
        pooled[sel] = p
    return pooled


def reader_accuracy(model: EvidenceHeads, samples: SignSamples) -> tuple[float, float]:
    """(accuracy among the building's category's names, among all names), pooled as the
    annotator pools."""
    logits = _logits(model, samples, samples.heads)
    masked = logits + torch.where(model.allowed(NAME)[samples.classes], 0.0, NEG)
    within = float((masked.argmax(-1) == samples.names).float().mean())
    overall = float((logits.argmax(-1) == samples.names).float().mean())
    return within, overall


def sign_loss(attention: torch.Tensor, strip: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """The loss of `ReaderConfig.sign_weight` on the reader's attention score as "a sign is
    here": attention (N, P) of N strips; strip (G,) the strip of each named building, own
    (G, P) its columns (0 on them, NEG elsewhere). Positions on no named building's columns
    are pushed to 0 (mean BCE over them); each building's largest score over its own columns
    to 1 (multiple-instance: its sign is on it, its exact columns are not labelled)."""
    on = own > NEG / 2
    covered = torch.zeros(attention.shape, dtype=torch.bool, device=attention.device)
    covered.index_put_((strip,), on, accumulate=True)
    off = attention[~covered]
    neg = (
        F.binary_cross_entropy_with_logits(off, torch.zeros_like(off))
        if off.numel()
        else attention.new_zeros(())
    )
    best = torch.where(on, attention[strip], torch.finfo(attention.dtype).min).amax(-1)
    pos = F.binary_cross_entropy_with_logits(best, torch.ones_like(best))
    return neg + pos


OCCLUDER_WIDTH = (8, 40)
"""Pixel widths of `occlude`'s bands (a trunk to a small crown at SynthCities' scale)."""


def occlude(strips: torch.Tensor, chance: float, gen: torch.Generator) -> torch.Tensor:
    """`ReaderConfig.occlude`: each strip (N, 3, h, W), with probability `chance`, gets one
    vertical band of a random colour plus noise (in the normalised space) at a random
    column; a copy. The labels stay: a sign partly hidden still names its building."""
    out = strips.clone()
    n, c, h, w = strips.shape
    hit = torch.rand(n, generator=gen) < chance
    lo, hi = OCCLUDER_WIDTH
    for i in torch.nonzero(hit).flatten().tolist():
        bw = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, max(1, w - bw), (1,), generator=gen))
        colour = torch.rand(c, 1, 1, generator=gen) * 4 - 2
        noise = torch.randn(c, h, bw, generator=gen) * 0.3
        out[i, :, :, x0 : x0 + bw] = colour + noise
    return out


def train_reader(
    model: EvidenceHeads, train: SignSamples, val: SignSamples, config: EvidenceTrainConfig
) -> dict[str, float]:
    """Train on the training strips, keep the epoch with the best validation accuracy
    within the category."""
    reader = model.reader
    assert reader is not None
    cfg = reader.config
    gen = torch.Generator().manual_seed(config.seed)
    n = len(train.strips)
    steps_per_epoch = -(-n // cfg.batch_size)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    local = torch.full((n,), -1, dtype=torch.long)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    step = epoch = 0
    while step < total:
        epoch += 1
        reader.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            local[idx] = torch.arange(len(idx))
            sel = local[train.strip] >= 0
            strips = train.strips[idx].float()
            if cfg.occlude > 0:  # off, `gen` draws the batches alone, as before the option
                strips = occlude(strips, cfg.occlude, gen)
            logits, att = reader(strips)
            strip_of = local[train.strip[sel]]  # each building's strip within the batch
            pooled = pool_positions(logits, att, strip_of, train.own[sel])
            loss = F.cross_entropy(pooled, train.names[sel])
            if cfg.sign_weight > 0:
                loss = loss + cfg.sign_weight * sign_loss(att, strip_of, train.own[sel])
            local[idx] = -1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
        within, overall = reader_accuracy(model, val)
        log.info(
            "reader epoch %d: val accuracy %.3f within the category, %.3f over all names, %.0fs",
            epoch,
            within,
            overall,
            time.perf_counter() - t0,
        )
        if best is None or within > best[0]:
            best = (within, epoch, copy.deepcopy(reader.state_dict()))
    assert best is not None
    reader.load_state_dict(best[2])
    within, overall = reader_accuracy(model, val)
    return {
        "reader_best_epoch": float(best[1]),
        "reader_val_within_category": within,
        "reader_val_all_names": overall,
        "reader_train_buildings": float(len(train.names)),
        "reader_val_buildings": float(len(val.names)),
    }


def fit_reader_temperature(model: EvidenceHeads, val: SignSamples) -> float:
    """The temperature of the reader's within-category name distribution (validation NLL)."""
    logits = _logits(model, val, val.heads)
    masked = logits + torch.where(model.allowed(NAME)[val.classes], 0.0, NEG)
    nlls = [float(F.cross_entropy(masked / float(t), val.names)) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nlls))])
