"""CMPL training objectives (paper Eq. 5-6): SDM, Hard-Negative Isolation, Multi-Similarity.

All similarities are cosines of L2-normalised features. For the fine levels a feature is a set
of Q query tokens and the pair score is the mean per-query cosine; the squared distance of the
flattened, 1/sqrt(Q)-scaled token set is then 2 - 2*score, so one formula serves both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import ImageFeatures, TextFeatures
from .similarity import pairwise_similarity

if TYPE_CHECKING:
    from .config import CMPLConfig


def same_place(a_ids: Tensor, b_ids: Tensor) -> Tensor:
    return a_ids.unsqueeze(1) == b_ids.unsqueeze(0)


# -- SDM (IRRA) ------------------------------------------------------------------------------


def _kl_to_labels(logits: Tensor, labels: Tensor, eps: float) -> Tensor:
    """mean_i sum_j p_ij (log p_ij - log(q_ij + eps)), q = row-normalised labels."""
    q = labels / labels.sum(dim=1, keepdim=True).clamp(min=1.0)
    log_p = logits.log_softmax(dim=1)
    return (log_p.exp() * (log_p - torch.log(q + eps))).sum(dim=1).mean()


def sdm_loss_from_similarity(
    sim: Tensor,
    place_ids: Tensor,
    tau: float = 0.02,
    eps: float = 1e-8,
    txt_place_ids: Tensor | None = None,
) -> Tensor:
    """SDM on a precomputed image x text similarity matrix (e.g. a fine level's mean scores).

    Several texts of the same place are all positives: the target spreads evenly over them
    instead of pretending the diagonal is the only match.
    """
    txt_ids = place_ids if txt_place_ids is None else txt_place_ids
    labels = same_place(place_ids, txt_ids).to(sim.dtype)
    logits = sim / tau
    return _kl_to_labels(logits, labels, eps) + _kl_to_labels(logits.t(), labels.t(), eps)


def sdm_loss(
    img: Tensor,
    txt: Tensor,
    place_ids: Tensor,
    tau: float = 0.02,
    eps: float = 1e-8,
    txt_place_ids: Tensor | None = None,
) -> Tensor:
    """Bidirectional similarity-distribution-matching loss on embeddings (normalised here)."""
    return sdm_loss_from_similarity(
        pairwise_similarity(img, txt), place_ids, tau, eps, txt_place_ids
    )


# -- Hard-Negative Isolation (paper Sec. 4.2) ------------------------------------------------


def hi_loss_from_similarity(sim: Tensor, place_ids: Tensor, margin: float = 0.2) -> Tensor:
    """Triplet hinge on the single most confusing other-place text and image of each pair.

    `sim` is square: row i is image i, column i its own text. d^2 = 2 - 2*sim. Anchors whose
    batch holds no other place have no negative and are left out of the mean.
    """
    if sim.shape[0] != sim.shape[1]:
        raise ValueError("HI needs matched pairs: a square image x text similarity matrix")
    d2 = 2.0 - 2.0 * sim
    neg = ~same_place(place_ids, place_ids)
    has_neg = neg.any(dim=1)
    if not bool(has_neg.any()):
        return sim.sum() * 0.0
    pos_d2 = d2.diagonal()
    far = torch.finfo(d2.dtype).max
    # Hardest negative = highest similarity = smallest squared distance.
    hardest_text = d2.masked_fill(~neg, far).min(dim=1).values  # per image, over texts
    hardest_image = d2.masked_fill(~neg, far).min(dim=0).values  # per text, over images
    per_anchor = F.relu(pos_d2 - hardest_text + margin) + F.relu(pos_d2 - hardest_image + margin)
    return per_anchor[has_neg].mean()


def hi_loss(img: Tensor, txt: Tensor, place_ids: Tensor, margin: float = 0.2) -> Tensor:
    """HI on matched image/text features, global [B, D] or fine [B, Q, D]."""
    return hi_loss_from_similarity(pairwise_similarity(img, txt), place_ids, margin)


# -- Multi-Similarity (Wang et al., CVPR 2019) -----------------------------------------------


def _log1p_sum_exp(z: Tensor, keep: Tensor) -> Tensor:
    """log(1 + sum_{keep} exp(z)) per row, stable; 0 for rows that keep nothing."""
    z = z.masked_fill(~keep, float("-inf"))
    zero = torch.zeros(z.shape[0], 1, dtype=z.dtype, device=z.device)
    return torch.logsumexp(torch.cat([zero, z], dim=1), dim=1)


def multi_similarity_loss(
    emb: Tensor,
    labels: Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    miner_margin: float = 0.1,
) -> Tensor:
    """MS loss with its pair miner, averaged over all anchors.

    Miner: a negative (i, j) is kept if S_ij + margin > the anchor's weakest positive, a
    positive (i, k) if S_ik - margin < its strongest negative; the rest are easy and carry no
    gradient. Loss_i = 1/alpha log(1 + sum_P exp(-alpha (S - base)))
                     + 1/beta  log(1 + sum_N exp( beta (S - base))).
    """
    sim = pairwise_similarity(emb, emb)
    same = same_place(labels, labels)
    eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
    pos = same & ~eye
    neg = ~same
    with torch.no_grad():
        weakest_pos = sim.masked_fill(~pos, float("inf")).min(dim=1, keepdim=True).values
        strongest_neg = sim.masked_fill(~neg, float("-inf")).max(dim=1, keepdim=True).values
        neg_keep = neg & (sim + miner_margin > weakest_pos)
        pos_keep = pos & (sim - miner_margin < strongest_neg)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), pos_keep) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), neg_keep) / beta
    return (pos_term + neg_term).mean()


# -- Eq. 6 -----------------------------------------------------------------------------------


class CMPLLoss(nn.Module):
    """L = lambda_gs L_gs + lambda_h sum_l (L_ls^l + L_hi^l) + lambda_vpr L_vpr.

    Switched-off terms are absent from the returned dict (not reported as zero), so logs show
    which ablation row actually ran.
    """

    def __init__(self, config: CMPLConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        img: ImageFeatures,
        txt: TextFeatures,
        place_ids: Tensor,
        aux_weight: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`aux_weight` scales the fine (ls, hi) and VPR terms on top of their lambdas, for a
        global-only warm-up: the terms are still computed and logged, and every parameter stays
        in the graph (zero gradient), so DDP needs no unused-parameter search."""
        cfg = self.config
        terms: dict[str, Tensor] = {}
        total = sdm_loss(img.global_, txt.global_, place_ids, cfg.sdm_tau, cfg.sdm_eps)
        terms["gs"] = total
        total = cfg.lambda_gs * total
        if cfg.use_fine and (cfg.use_local_sdm or cfg.use_hi):
            local = torch.zeros((), device=total.device, dtype=total.dtype)
            for level, img_fine in img.fine.items():
                sim = pairwise_similarity(img_fine, txt.fine[level])
                if cfg.use_local_sdm:
                    ls = sdm_loss_from_similarity(sim, place_ids, cfg.sdm_tau, cfg.sdm_eps)
                    terms[f"ls/{level}"] = ls
                    local = local + ls
                if cfg.use_hi:
                    hi = hi_loss_from_similarity(sim, place_ids, cfg.hi_margin)
                    terms[f"hi/{level}"] = hi
                    local = local + hi
            total = total + aux_weight * cfg.lambda_h * local
        if cfg.use_vpr:
            vpr = multi_similarity_loss(
                img.global_,
                place_ids,
                cfg.ms_alpha,
                cfg.ms_beta,
                cfg.ms_base,
                cfg.ms_miner_margin,
            )
            terms["vpr"] = vpr
            total = total + aux_weight * cfg.lambda_vpr * vpr
        terms["total"] = total
        return total, terms
