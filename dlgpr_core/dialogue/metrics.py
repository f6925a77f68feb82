"""Dialogue-retrieval metrics: Cumulative Recall@K, BRI, PRG/RID, SA and DDI.

The exact definitions are those of the reference formulas-and-formats.md (paper Sec. 5.1,
Eqs. 1-3; PlugIR's BRI as fixed in March 2025). They are kept here as small numpy functions
on rank arrays, so that the interactive benchmark, the GRPO reward (R_prg) and the DDI
curriculum all count a round the same way, and so each can be checked by hand.

Rank conventions (two, because the sources use two):

* ``best_rank`` / Recall / BRI use **0-indexed** ranks of the best-ranked positive over the
  whole map (rank 0 = top-1), as in PlugIR's BRI and ChatIR's Recall.
* ``gain`` / PRG use **1-indexed** ranks of *every* positive, because the nDCG contribution
  c(r) = 1 / log2(r + 1) is defined on 1-indexed positions (c(1) = 1). For PRG (Eq. 2) the
  positives are all database images of the target place, ranked among all images;
  `prg_place_rank` is the one-place-rank stand-in for callers that rank places only.

Tie policy (both conventions): **pessimistic**. A positive whose score equals a negative's
ranks after that negative. An optimistic policy would reward a collapsed retriever that gives
every item the same score: it would put a positive at rank 0 for every query and score perfect
recall. Among positives that tie with each other the order is by item index; it does not matter
for the best rank and keeps the 1-indexed positions distinct, which the gain needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- validation


def _as_int_array(values: npt.ArrayLike, name: str, ndim: int, minimum: int) -> IntArray:
    """Integer-valued array of the given rank, every entry >= `minimum`, or a ValueError.

    Floats are accepted when they hold whole numbers (ranks often come out of numpy as
    floats); anything else would make a "rank" silently mean something else.
    """
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer ranks, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds non-finite values")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} holds non-integer ranks")
    out = arr.astype(np.int64)
    low = int(out.min())
    if low < minimum:
        raise ValueError(f"{name} holds a rank below {minimum} ({low})")
    return out


def _scores_and_mask(
    scores: npt.ArrayLike, positive_mask: npt.ArrayLike, ndim: int
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Finite float scores and a boolean mask of the same shape, each row with a positive."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(positive_mask)
    if s.ndim != ndim:
        raise ValueError(f"scores must be {ndim}-D, got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"scores is empty (shape {s.shape})")
    if m.shape != s.shape:
        raise ValueError(f"positive_mask shape {m.shape} differs from scores shape {s.shape}")
    if m.dtype.kind != "b":
        raise ValueError(f"positive_mask must be boolean, got dtype {m.dtype}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold non-finite values (NaN would rank arbitrarily)")
    if not np.all(m.any(axis=-1)):
        raise ValueError("positive_mask has no positive (in some row): no rank to report")
    return s, m.astype(bool)


# --------------------------------------------------------------------------- ranks


def best_rank(scores: npt.ArrayLike, positive_mask: npt.ArrayLike) -> int:
    """0-indexed rank of the best-ranked positive among all items (higher score = better).

    Pessimistic ties: the best positive's rank is the number of *negatives* scoring at least
    as high as it, so a positive tied with negatives ranks after them (see the module note).
    """
    s, m = _scores_and_mask(scores, positive_mask, ndim=1)
    top_pos = s[m].max()
    return int(np.count_nonzero(s[~m] >= top_pos))


def best_ranks(scores: npt.ArrayLike, positive_mask: npt.ArrayLike) -> IntArray:
    """`best_rank` for each row of a [n_queries, n_items] score matrix."""
    s, m = _scores_and_mask(scores, positive_mask, ndim=2)
    top_pos = np.where(m, s, -np.inf).max(axis=1, keepdims=True)
    return np.count_nonzero((s >= top_pos) & ~m, axis=1).astype(np.int64)


def best_rank_from_ranks(positive_ranks: npt.ArrayLike) -> int:
    """Best 0-indexed rank when the positives' 0-indexed ranks were already computed."""
    return int(_as_int_array(positive_ranks, "positive_ranks", ndim=1, minimum=0).min())


def positive_ranks(scores: npt.ArrayLike, positive_mask: npt.ArrayLike) -> IntArray:
    """1-indexed rank of every positive (in item order), the input of `gain` / `prg`.

    Pessimistic ties against negatives; positives tied with each other take consecutive
    positions by item index, so the ranks are distinct and the gain never exceeds G*.
    """
    s, m = _scores_and_mask(scores, positive_mask, ndim=1)
    pos_idx = np.flatnonzero(m)
    neg = s[~m]
    out = np.empty(pos_idx.size, dtype=np.int64)
    for i, j in enumerate(pos_idx):
        better_neg = np.count_nonzero(neg >= s[j])
        better_pos = np.count_nonzero(s[pos_idx] > s[j]) + np.count_nonzero(s[pos_idx[:i]] == s[j])
        out[i] = better_neg + better_pos + 1
    return out


# --------------------------------------------------------------------------- recall and BRI


def cumulative_recall_at_k(
    ranks: npt.ArrayLike, ks: Iterable[int] = (1, 5, 10)
) -> dict[int, FloatArray]:
    """Cumulative Recall@K per round (ChatIR's first-hitting-time definition).

    `ranks` is [n_queries, n_rounds] of 0-indexed best ranks. A query is a hit at round t if
    its rank was < K at ANY round s <= t: once the user has seen the target in the top K the
    dialogue has succeeded, even if a later answer pushes it out. Returns K -> [n_rounds]
    fraction of queries hit (non-decreasing in t).
    """
    r = _as_int_array(ranks, "ranks", ndim=2, minimum=0)
    k_list = list(ks)
    if not k_list:
        raise ValueError("ks is empty")
    for k in k_list:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"ks must hold positive integers, got {k!r}")
    best_so_far = np.minimum.accumulate(r, axis=1)
    return {int(k): (best_so_far < k).mean(axis=0).astype(np.float64) for k in k_list}


def bri(ranks: npt.ArrayLike) -> float:
    """Best log Rank Integral (PlugIR, corrected March 2025); lower is better, 0 is perfect.

    `ranks` is [n_queries, T+1] of 0-indexed best ranks for rounds 0..T. With
    b_t = min_{s<=t} r_s (best rank so far, so a round that hurts costs nothing extra),
    BRI = (1/T) * sum_{t=0}^{T-1} mean_q [(ln(b_t+1) + ln(b_{t+1}+1)) / 2]
    (natural log, trapezoid rule over the rounds).

    T = 0 (only round 0) has no interval to integrate over; we return mean_q ln(b_0+1), the
    limit of the integral's average height, so a static run still gets a comparable number.
    """
    r = _as_int_array(ranks, "ranks", ndim=2, minimum=0)
    log_best = np.log(np.minimum.accumulate(r, axis=1).astype(np.float64) + 1.0)
    n_intervals = r.shape[1] - 1
    if n_intervals == 0:
        return float(log_best[:, 0].mean())
    trapezoids = (log_best[:, :-1] + log_best[:, 1:]) / 2.0
    return float(trapezoids.mean(axis=0).sum() / n_intervals)


# --------------------------------------------------------------------------- PRG / RID


def _positive_positions(ranks: npt.ArrayLike, name: str) -> IntArray:
    """1-indexed, distinct positions of the positives (two items cannot share a position)."""
    r = _as_int_array(ranks, name, ndim=1, minimum=1)
    if np.unique(r).size != r.size:
        raise ValueError(f"{name} holds duplicate positions; break ties first (positive_ranks)")
    return r


def gain(ranks: npt.ArrayLike) -> float:
    """G = sum_j c(r_j), c(r) = 1 / log2(r + 1), over the 1-indexed ranks of all positives."""
    r = _positive_positions(ranks, "ranks").astype(np.float64)
    return float(np.sum(1.0 / np.log2(r + 1.0)))


def ideal_gain(n_pos: int) -> float:
    """G* = sum_{k=1}^{n_pos} c(k): the gain with every positive at the top."""
    if isinstance(n_pos, bool) or not isinstance(n_pos, int | np.integer) or n_pos < 1:
        raise ValueError(f"n_pos must be a positive integer, got {n_pos!r}")
    return float(np.sum(1.0 / np.log2(np.arange(1, int(n_pos) + 1, dtype=np.float64) + 1.0)))


def _prev_new(prev_ranks: npt.ArrayLike, new_ranks: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    """Both rank vectors, validated, for the same set of positives."""
    prev = _positive_positions(prev_ranks, "prev_ranks")
    new = _positive_positions(new_ranks, "new_ranks")
    if prev.size != new.size:
        raise ValueError(
            f"prev_ranks has {prev.size} positives but new_ranks has {new.size}; "
            "PRG compares the same positives before and after the round"
        )
    return prev, new


def prg(prev_ranks: npt.ArrayLike, new_ranks: npt.ArrayLike) -> float:
    """Positional Retrieval Gain (paper Eq. 2): (G_new - G_prev) / (G* - G_prev).

    ``prev_ranks`` / ``new_ranks``: the 1-indexed rank of **every positive image** (all
    database images of the target place, in the same order) before and after the round,
    over the whole image ranking; G sums c(r) over them and G* puts them all at the top.
    `positive_ranks` gives them from scores, `target_image_ranks` from a ranked image list;
    `prg_from_scores` does both steps. A single place rank is not Eq. 2: see
    `prg_place_rank`.

    The share of the gain still available before the round that the round recovered: 1 when
    every positive moves to the top. It is 0 when the previous ranks were already ideal (the
    ratio would be 0/0: nothing was left to gain). It is negative, with no lower bound of -1,
    when the positives move down; that is allowed, since a harmful question should score below
    a useless one (R_prg of GRPO, RID > 1 in the curriculum).
    """
    prev, new = _prev_new(prev_ranks, new_ranks)
    # Distinct 1-indexed positions reach G* exactly when they are {1..n}; checking that on
    # integers avoids calling a float difference of 1e-16 "something left to gain".
    if int(prev.max()) == prev.size:
        return 0.0
    g_prev = gain(prev)
    return (gain(new) - g_prev) / (ideal_gain(prev.size) - g_prev)


def prg_from_scores(
    prev_scores: npt.ArrayLike, new_scores: npt.ArrayLike, positive_mask: npt.ArrayLike
) -> float:
    """Eq. 2 from two score vectors over all database images (before / after the round) and
    the mask of the target place's images: each positive image's rank before and after
    (`positive_ranks`, ties against the positives), then `prg`."""
    return prg(
        positive_ranks(prev_scores, positive_mask), positive_ranks(new_scores, positive_mask)
    )


def target_image_ranks(
    ranked_image_places: Sequence[str], target: str, n_positives: int
) -> IntArray:
    """1-indexed ranks of all ``n_positives`` images of ``target`` in a best-first list of
    image hits (given as their place ids), the input `prg` takes.

    A whole-map ranking contains every image, and the ranks are exact. A top-k list may miss
    some of the target's images: they get the positions right after the list (k+1, k+2,
    ...), the nearest they can be, so the ranks stay distinct and the gain stays <= G*.
    """
    if isinstance(n_positives, bool) or not isinstance(n_positives, int) or n_positives < 1:
        raise ValueError(f"n_positives must be a positive integer, got {n_positives!r}")
    found = [i + 1 for i, place in enumerate(ranked_image_places) if place == target]
    if len(found) > n_positives:
        raise ValueError(
            f"the ranking holds {len(found)} images of {target!r}, more than n_positives="
            f"{n_positives}"
        )
    after = len(ranked_image_places)
    missing = range(after + 1, after + 1 + n_positives - len(found))
    return np.array([*found, *missing], dtype=np.int64)


def prg_place_rank(prev_rank: int, new_rank: int) -> float:
    """PRG with the target *place* as the only positive, from its 1-indexed place rank.

    Not Eq. 2, which sums over every positive image (`prg`): it is the fallback for callers
    whose search ranks places only (the dialogue's `SearchFn`), and it equals Eq. 2 only for
    a place with a single image. It over-credits a round that brings one image of the place
    up while its other images stay low, and G* = c(1) = 1.
    """
    return prg([prev_rank], [new_rank])


def rid(prg_value: float) -> float:
    """Retriever-Informed Difficulty = 1 - PRG: little rank improvement means a hard round."""
    return 1.0 - float(prg_value)


def ndcg_gain(prev_ranks: npt.ArrayLike, new_ranks: npt.ArrayLike) -> float:
    """nDCG improvement G_new/G* - G_prev/G*, reported beside PRG.

    Unlike PRG it is not rescaled by what was left to gain, so it stays comparable across
    rounds that start from very different ranks.
    """
    prev, new = _prev_new(prev_ranks, new_ranks)
    return (gain(new) - gain(prev)) / ideal_gain(prev.size)


# --------------------------------------------------------------------------- SA / DDI


def _unit_rows(x: npt.ArrayLike, name: str, dim: int | None) -> FloatArray:
    """Embeddings as L2-normalised rows [n, d] (a 1-D vector becomes one row)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [d] or [n, d] embedding, got {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has dimension {a.shape[1]}, expected {dim}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError(f"{name} holds a zero vector (cosine undefined)")
    return a / norms


def semantic_ambiguity(
    t_target: npt.ArrayLike, t_pos: npt.ArrayLike, t_neg: npt.ArrayLike, alpha: float
) -> float:
    """SA (paper Eq. 1) = alpha * sim(t_t, t_n) + (1 - alpha) * (1 - sim(t_t, t_p)), cosine.

    High when the target text looks like the negatives' and unlike its own positives': an
    ambiguous candidate set. `t_pos` / `t_neg` may be one [d] vector or a set [n, d]; for a
    set the cosine is averaged over its rows (our choice: the paper writes a single t_p, t_n).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tgt = _unit_rows(t_target, "t_target", None)
    if tgt.shape[0] != 1:
        raise ValueError(f"t_target must be a single embedding, got shape {tgt.shape}")
    pos = _unit_rows(t_pos, "t_pos", tgt.shape[1])
    neg = _unit_rows(t_neg, "t_neg", tgt.shape[1])
    sim_neg = float((neg @ tgt[0]).mean())
    sim_pos = float((pos @ tgt[0]).mean())
    return alpha * sim_neg + (1.0 - alpha) * (1.0 - sim_pos)


def ddi(sa: float, rid_value: float, w_sa: float, w_rid: float) -> float:
    """Discriminative Difficulty Index (paper Eq. 3) = w_sa * SA + w_rid * RID."""
    values = {"sa": sa, "rid": rid_value, "w_sa": w_sa, "w_rid": w_rid}
    for name, v in values.items():
        if not np.isfinite(v):
            raise ValueError(f"{name} is not finite ({v})")
    if w_sa < 0 or w_rid < 0:
        raise ValueError(f"weights must be non-negative, got w_sa={w_sa}, w_rid={w_rid}")
    return float(w_sa * sa + w_rid * rid_value)


class DDIConfig(BaseModel):
    """Curriculum knobs of paper Sec. 4.1 step 4. The paper gives NO numeric value for any.

    Defaults are ours, chosen to be neutral until tuned on a real pool:
    * alpha = 0.5: SA weighs "looks like the negatives" and "unlike the positives" equally.
    * w_sa = w_rid = 0.5: DDI is the plain mean of SA and RID, both roughly in [0, 1].
    * tau_1 = 0.05: a round that recovers under 5% of the remaining gain counts as "minimal
      rank change" and is dropped (PRG < tau_1).
    * threshold = 0.5: low/high DDI split at the midpoint of that nominal [0, 1] range;
      replace it by a pool quantile (e.g. the median) once the pool is known.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    w_sa: float = Field(default=0.5, ge=0.0)
    w_rid: float = Field(default=0.5, ge=0.0)
    tau_1: float = 0.05
    threshold: float = 0.5

    def keep(self, prg_value: float) -> bool:
        """Whether a round survives the low-quality filter (PRG >= tau_1)."""
        return float(prg_value) >= self.tau_1

    def score(self, sa: float, rid_value: float) -> float:
        """DDI of one round with this config's weights."""
        return ddi(sa, rid_value, self.w_sa, self.w_rid)

    def is_high(self, ddi_value: float) -> bool:
        """Whether a round belongs to the high-DDI (hard, RL-stage) side of the split."""
        return float(ddi_value) >= self.threshold
