"""The paper's DDI curriculum: score each example's difficulty, split SFT from GRPO data.

SA (semantic ambiguity, Eq. 1) comes from the retriever's text encoder over the round's
candidates, RID from the teacher's PRG; DDI (Eq. 3) combines them. SFT gets a mostly low-DDI
set and GRPO a disjoint, mostly high-DDI one; the tau_1 filter drops weak teacher rounds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.metrics import DDIConfig, semantic_ambiguity
from dlgpr_core.dq_training.examples import (
    DQExample,
)

EmbedTexts = Callable[[Sequence[str]], np.ndarray]
"""texts -> L2-normalised rows: the retriever's text encoder (phi_T of paper Eq. 1)."""


def score_difficulty(
    examples: Sequence[DQExample],
    places_by_id: Mapping[str, PlaceAnnotation],
    embed: EmbedTexts,
    ddi_config: DDIConfig | None = None,
) -> list[DQExample]:
    """Each example with its SA and DDI (paper Eqs. 1 and 3).

    Our reading of Eq. 1 for a dialogue round: t_t is the round's query (d0 + answers), its
    positive the target's description, its negatives the descriptions of the round's other
    top-k candidates: ambiguous when the query reads like the look-alikes and unlike its
    own place. RID = 1 - the teacher's PRG (how little the round's question resolved).
    """
    cfg = ddi_config or DDIConfig()
    texts: dict[str, str] = {}

    def text_of(pid: str) -> str | None:
        place = places_by_id.get(pid)
        return place.description if place is not None else None

    rows: list[tuple[int, str, list[str]]] = []
    for i, ex in enumerate(examples):
        negatives = [pid for pid in ex.candidates if pid != ex.target and text_of(pid)]
        if text_of(ex.target) is None or not negatives:
            continue
        query = " ".join((ex.d0, *ex.answers))
        rows.append((i, query, negatives))
        texts[ex.target] = text_of(ex.target) or ""
        texts.update({pid: text_of(pid) or "" for pid in negatives})
    ids = sorted(texts)
    place_vecs = dict(zip(ids, embed([texts[pid] for pid in ids]), strict=True)) if ids else {}
    query_vecs = embed([q for _, q, _ in rows]) if rows else np.zeros((0, 1))
    out = list(examples)
    for (i, _, negatives), qv in zip(rows, query_vecs, strict=True):
        ex = examples[i]
        vecs = [qv, place_vecs[ex.target], *(place_vecs[p] for p in negatives)]
        if any(not np.any(v) for v in vecs):
            continue  # a text the encoder cannot embed: cosine undefined, DDI left unset
        sa = semantic_ambiguity(
            qv, place_vecs[ex.target], np.stack([place_vecs[p] for p in negatives]), cfg.alpha
        )
        out[i] = replace(ex, sa=sa, ddi=cfg.score(sa, 1.0 - ex.teacher_prg))
    return out


def curriculum_split(
    examples: Sequence[DQExample],
    ddi_config: DDIConfig | None = None,
    n_sft: int | None = None,
    n_grpo: int | None = None,
    major_share: float = 0.7,
    seed: int = 0,
) -> tuple[list[DQExample], list[DQExample]]:
    """The paper's curriculum: drop rounds with PRG < tau_1, then an SFT set that is
    `major_share` low-DDI and a disjoint GRPO set that is `major_share` high-DDI.

    Sizes default to a 2:1 split of what survives (the paper's 20k : 10k); a side short
    of examples is topped up from the other, so no example is wasted. Examples without a
    DDI (no negatives) count as low-DDI."""
    cfg = ddi_config or DDIConfig()
    if not 0.0 <= major_share <= 1.0:
        raise ValueError(f"major_share must be in [0, 1], got {major_share}")
    kept = [e for e in examples if cfg.keep(e.teacher_prg)]
    rng = random.Random(seed)
    low = [e for e in kept if e.ddi is None or not cfg.is_high(e.ddi)]
    high = [e for e in kept if e.ddi is not None and cfg.is_high(e.ddi)]
    rng.shuffle(low)
    rng.shuffle(high)
    n_sft = round(len(kept) * 2 / 3) if n_sft is None else n_sft
    n_grpo = len(kept) - n_sft if n_grpo is None else n_grpo

    def take(first: list[DQExample], second: list[DQExample], n: int) -> list[DQExample]:
        want = min(round(major_share * n), len(first))
        chosen = first[:want]
        del first[:want]
        rest = min(n - len(chosen), len(second))
        chosen += second[:rest]
        del second[:rest]
        extra = min(n - len(chosen), len(first))
        chosen += first[:extra]
        del first[:extra]
        return chosen

    sft = take(low, high, n_sft)
    grpo = take(high, low, n_grpo)
    return sft, grpo
