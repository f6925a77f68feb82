"""LiT alignment of two locked pretrained towers on SynthCities.

Both towers stay frozen, so their outputs are computed once and cached; training then only
touches the projection heads and the logit scale and takes minutes on a laptop CPU. Each batch
holds one randomly chosen view and one randomly chosen text of each of B distinct places, so a
place's other views and texts can never appear as negatives (the multi-positive problem of
CLIP training on places is avoided by construction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dlgpr_core.data.text_augment import TextAugmentConfig, TextAugmenter

from .checkpoints import save_trained
from .evaluate import place_recall_from_embeddings
from .open_clip_encoder import OpenClipEncoder

log = logging.getLogger(__name__)

TEXT_KINDS = ("description", "caption", "facts", "augmented")
"""Text kinds of a place; "augmented" are `data.text_augment` variants (with an augment
config): partial, shuffled and dropped descriptions, answers, negations, dialogues."""


@dataclass
class AlignConfig:
    """Everything that determines a training run (stored next to the checkpoint)."""

    data_root: Path
    cities: list[str]
    out: Path
    model_config: Path | None = None
    """JSON model config; None = the dlgpr-lite config."""
    epochs: int = 80
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    text_kinds: tuple[str, ...] = ("description", "caption")
    """Which texts of a place are positives (of TEXT_KINDS). Per-fact phrases measurably hurt
    held-out description recall (R@10 0.42 vs 0.49 at 40 epochs), so they are off by default."""
    cache_dir: Path | None = None
    """Where frozen tower features are cached; None = <data_root>/.feature_cache."""
    augment: TextAugmentConfig | None = None
    """With it, each place also gets its `text_augment` variants as the "augmented" kind
    (add "augmented" to `text_kinds` to train on them)."""
    augment_seed: int = 0
    max_places: int | None = None
    device: str | None = None
    log_every: int = 1


@dataclass
class PlaceTexts:
    """What one place contributes to training: image paths and texts by kind."""

    place_id: str
    images: list[Path]
    texts: dict[str, list[str]] = field(default_factory=dict)


def load_places(
    data_root: Path,
    city: str,
    max_places: int | None = None,
    augment: TextAugmentConfig | None = None,
    augment_seed: int = 0,
) -> list[PlaceTexts]:
    from dlgpr_core.data.annotations import read_annotations, view_image_path

    anns = read_annotations(data_root / "Annotations" / f"{city}.jsonl")[:max_places]
    augmenter = TextAugmenter.from_places(anns, augment) if augment is not None else None
    places = []
    for ann in anns:
        facts = list(dict.fromkeys(f.mention for f in ann.facts))
        texts = {"description": [ann.description], "caption": [ann.caption], "facts": facts}
        if augmenter is not None:
            texts["augmented"] = [v.text for v in augmenter.variants(ann, augment_seed)]
        places.append(
            PlaceTexts(
                place_id=f"{ann.city}:{ann.place_id}",
                images=[view_image_path(data_root, v) for v in ann.views],
                texts=texts,
            )
        )
    return places


# -- frozen tower features ---------------------------------------------------------------------


def image_tower_features(enc: OpenClipEncoder, images: Sequence[Image.Image]) -> torch.Tensor:
    """Pooled image-trunk output: everything of the image path except the trained head."""
    batch = torch.stack([enc.preprocess(im.convert("RGB")) for im in images]).to(enc.device)
    with torch.inference_mode():
        return enc.model.visual.trunk(batch).float().cpu()


def text_tower_features(enc: OpenClipEncoder, texts: Sequence[str]) -> torch.Tensor:
    """Mean-pooled text-transformer output: everything of the text path except the head."""
    text = enc.model.text
    ids = enc.tokenizer(list(texts)).to(enc.device)
    with torch.inference_mode():
        mask = ids.ne(text.config.pad_token_id).long()
        out = text.transformer(input_ids=ids, attention_mask=mask)
        return text.pooler(out, mask).float().cpu()


def _key(item: str) -> str:
    return hashlib.sha1(item.encode()).hexdigest()


def _cached(
    cache: Path,
    items: list[str],
    compute: Callable[[list[str]], torch.Tensor],
    batch: int,
    what: str,
) -> np.ndarray:
    """Features for `items` (paths or texts), computing only those missing from the cache."""
    store: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as npz:
            store = dict(zip(npz["keys"].tolist(), npz["feats"], strict=True))
    keys = [_key(i) for i in items]
    todo = [i for i in dict.fromkeys(items) if _key(i) not in store]
    if todo:
        t0 = time.perf_counter()
        # Length-sorted chunks keep text batches free of padding.
        todo.sort(key=len)
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for item, f in zip(chunk, compute(chunk).numpy(), strict=True):
                store[_key(item)] = f
        log.info(
            "%s: computed %d tower features in %.1fs", what, len(todo), time.perf_counter() - t0
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(store)
        # Written beside the cache and renamed over it: a crash never leaves half a file.
        tmp = cache.with_name(f"{cache.stem}.tmp-{os.getpid()}.npz")
        try:
            np.savez(tmp, keys=np.array(names), feats=np.stack([store[k] for k in names]))
            tmp.replace(cache)
        finally:
            tmp.unlink(missing_ok=True)
    return np.stack([store[k] for k in keys]).astype(np.float32)


def _tower_tag(enc: OpenClipEncoder) -> str:
    """Cache key of the frozen towers (heads excluded, so retraining reuses the cache)."""
    ident = {
        "config": enc.identity["config"],
        "towers": [w for w in enc.identity["weights"] if w["role"] == "tower"],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class CityFeatures:
    """Frozen features of one city, indexed by place."""

    place_ids: list[str]
    image_feats: np.ndarray
    image_place: np.ndarray
    """Index into place_ids for every image row."""
    text_feats: np.ndarray
    text_place: np.ndarray
    text_kind: list[str]


def city_features(
    enc: OpenClipEncoder, places: list[PlaceTexts], cache_dir: Path, city: str
) -> CityFeatures:
    tag = _tower_tag(enc)
    img_keys = [str(p) for pl in places for p in pl.images]

    def imgs(keys: list[str]) -> torch.Tensor:
        loaded = []
        for k in keys:
            with Image.open(k) as im:
                loaded.append(im.convert("RGB"))
        return image_tower_features(enc, loaded)

    image_feats = _cached(
        cache_dir / f"{city}-{tag}-images.npz", img_keys, imgs, 32, f"{city} images"
    )
    image_place = np.array([i for i, pl in enumerate(places) for _ in pl.images])
    texts, text_place, text_kind = [], [], []
    for i, pl in enumerate(places):
        for kind, items in pl.texts.items():
            for t in items:
                texts.append(t)
                text_place.append(i)
                text_kind.append(kind)

    def txts(keys: list[str]) -> torch.Tensor:
        return text_tower_features(enc, keys)

    text_feats = _cached(cache_dir / f"{city}-{tag}-texts.npz", texts, txts, 32, f"{city} texts")
    return CityFeatures(
        [pl.place_id for pl in places],
        image_feats,
        image_place,
        text_feats,
        np.array(text_place),
        text_kind,
    )


def merge(features: list[CityFeatures]) -> CityFeatures:
    offsets = np.cumsum([0] + [len(f.place_ids) for f in features])
    return CityFeatures(
        [p for f in features for p in f.place_ids],
        np.concatenate([f.image_feats for f in features]),
        np.concatenate([f.image_place + o for f, o in zip(features, offsets, strict=False)]),
        np.concatenate([f.text_feats for f in features]),
        np.concatenate([f.text_place + o for f, o in zip(features, offsets, strict=False)]),
        [k for f in features for k in f.text_kind],
    )


# -- training ----------------------------------------------------------------------------------


class Heads(nn.Module):
    """The trainable part of the model, applied to cached tower features."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.image = model.visual.head
        self.text = model.text.proj

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(img), dim=-1), F.normalize(self.text(txt), dim=-1)


def trainable_names(model: nn.Module) -> list[str]:
    """Parameters outside the locked towers: what a dlgpr-lite checkpoint holds."""
    return [
        n
        for n, _ in model.named_parameters()
        if not (n.startswith("visual.trunk.") or n.startswith("text.transformer."))
    ]


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sample_batch(
    feats: CityFeatures,
    place_idx: np.ndarray,
    kinds: Sequence[str],
    rng: np.random.Generator,
    by_place: tuple[list[np.ndarray], list[dict[str, np.ndarray]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view and one random text (kind first, so the many facts do not drown the one
    description) for each place of the batch."""
    img_rows, txt_rows = by_place
    ii, tt = [], []
    for p in place_idx:
        ii.append(rng.choice(img_rows[p]))
        avail = [k for k in kinds if len(txt_rows[p].get(k, ())) > 0]
        tt.append(rng.choice(txt_rows[p][avail[rng.integers(len(avail))]]))
    return torch.from_numpy(feats.image_feats[ii]), torch.from_numpy(feats.text_feats[tt])


def _index(feats: CityFeatures) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    n = len(feats.place_ids)
    img_rows = [np.flatnonzero(feats.image_place == p) for p in range(n)]
    txt_rows: list[dict[str, list[int]]] = [{} for _ in range(n)]
    for row, (p, kind) in enumerate(zip(feats.text_place, feats.text_kind, strict=True)):
        txt_rows[p].setdefault(kind, []).append(row)
    return img_rows, [{k: np.array(v) for k, v in d.items()} for d in txt_rows]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reset_heads(model: Any, seed: int) -> None:
    """Fresh, seeded head initialisation (the untrained baseline and the training start)."""
    torch.manual_seed(seed)
    for module in (model.visual.head, model.text.proj):
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(1 / 0.07)))


def train_heads(enc: OpenClipEncoder, feats: CityFeatures, cfg: AlignConfig) -> list[float]:
    """Train heads + logit scale in place on `enc.model`; returns the mean loss per epoch."""
    seed_everything(cfg.seed)
    reset_heads(enc.model, cfg.seed)
    heads = Heads(enc.model).to(enc.device).train()
    params = [p for n, p in enc.model.named_parameters() if n in set(trainable_names(enc.model))]
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    n = len(feats.place_ids)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1
    )
    rng = np.random.default_rng(cfg.seed)
    index = _index(feats)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            img, txt = sample_batch(feats, order[s * bs : (s + 1) * bs], cfg.text_kinds, rng, index)
            zi, zt = heads(img.to(enc.device), txt.to(enc.device))
            loss = clip_loss(zi, zt, enc.model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        if cfg.log_every and (epoch % cfg.log_every == 0 or epoch == cfg.epochs - 1):
            log.info(
                "epoch %d/%d loss %.4f logit_scale %.2f",
                epoch + 1,
                cfg.epochs,
                history[-1],
                float(enc.model.logit_scale.exp()),
            )
    heads.eval()
    for p in params:
        p.requires_grad_(False)
    return history


def feature_recall(
    enc: OpenClipEncoder, feats: CityFeatures, kind: str, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Text->place recall from cached features through the current heads (fast proxy of
    `evaluate.text_to_place_recall`, same numbers up to float rounding)."""
    heads = Heads(enc.model).to(enc.device).eval()
    rows = [i for i, k in enumerate(feats.text_kind) if k == kind]
    with torch.inference_mode():
        zi, zt = heads(
            torch.from_numpy(feats.image_feats).to(enc.device),
            torch.from_numpy(feats.text_feats[rows]).to(enc.device),
        )
    pid = np.array(feats.place_ids)
    return place_recall_from_embeddings(
        zi.cpu().numpy(),
        pid[feats.image_place].tolist(),
        zt.cpu().numpy(),
        pid[feats.text_place[rows]].tolist(),
        ks,
    )


def run_alignment(cfg: AlignConfig) -> dict[str, Any]:
    """Cache tower features, train the heads, save them; returns a small report."""
    from .factory import DEFAULT_CONFIG

    seed_everything(cfg.seed)
    enc = OpenClipEncoder.from_config(
        cfg.model_config or DEFAULT_CONFIG, allow_random=True, device=cfg.device
    )
    cache_dir = cfg.cache_dir or cfg.data_root / ".feature_cache"
    t0 = time.perf_counter()
    feats = merge(
        [
            city_features(
                enc,
                load_places(cfg.data_root, c, cfg.max_places, cfg.augment, cfg.augment_seed),
                cache_dir,
                c,
            )
            for c in cfg.cities
        ]
    )
    t_feats = time.perf_counter() - t0
    t0 = time.perf_counter()
    history = train_heads(enc, feats, cfg)
    t_train = time.perf_counter() - t0
    save_trained(enc.model, trainable_names(enc.model), cfg.out)
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "places": len(feats.place_ids),
        "images": len(feats.image_feats),
        "texts": len(feats.text_feats),
        "feature_seconds": round(t_feats, 1),
        "train_seconds": round(t_train, 1),
        "loss_first_epoch": history[0],
        "loss_last_epoch": history[-1],
        "checkpoint": str(cfg.out),
    }
    Path(str(cfg.out) + ".json").write_text(json.dumps(report, indent=2, default=str))
    return report
