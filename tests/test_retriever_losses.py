"""CMPL losses against values worked out by hand on 2x2 / 3x3 / 4x4 batches.

The expected numbers are written as explicit arithmetic (softmax of a few logits, a few
hinges), never by calling the loss under test again.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlgpr_core.retriever.config import CMPLConfig
from dlgpr_core.retriever.losses import (
    CMPLLoss,
    hi_loss,
    hi_loss_from_similarity,
    multi_similarity_loss,
    pairwise_similarity,
    sdm_loss,
    sdm_loss_from_similarity,
)
from dlgpr_core.retriever.model import ImageFeatures, TextFeatures

EPS = 1e-8


def test_sdm_single_positive_from_embeddings() -> None:
    # S = identity (scale of the inputs must not matter), tau = 0.5 -> logits rows [2, 0].
    img = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    places = torch.tensor([7, 9])
    p_hit = math.exp(2) / (math.exp(2) + 1)
    p_miss = 1 / (math.exp(2) + 1)
    # q = [1, 0]: KL = p_hit (ln p_hit - ln(1 + eps)) + p_miss (ln p_miss - ln eps)
    kl_row = p_hit * (math.log(p_hit) - math.log(1 + EPS)) + p_miss * (
        math.log(p_miss) - math.log(EPS)
    )
    expected = kl_row + kl_row  # both rows equal, both directions equal
    got = sdm_loss(img, txt, places, tau=0.5, eps=EPS)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sdm_from_similarity_uneven_softmax() -> None:
    # tau = 1, logits [ln 3, 0] -> p = [3/4, 1/4].
    sim = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])
    kl_row = 0.75 * (math.log(0.75) - math.log(1 + EPS)) + 0.25 * (math.log(0.25) - math.log(EPS))
    got = sdm_loss_from_similarity(sim, torch.tensor([0, 1]), tau=1.0, eps=EPS)
    assert got.item() == pytest.approx(2 * kl_row, rel=1e-5)


def test_sdm_multi_positive_two_images_of_one_place() -> None:
    # Items 0 and 1 show the same place. S = 0 everywhere -> p = 1/3 in every row.
    sim = torch.zeros(3, 3)
    places = torch.tensor([5, 5, 8])
    third = 1 / 3
    # rows 0, 1: q = [1/2, 1/2, 0]; row 2: q = [0, 0, 1]
    kl_shared = 2 * third * (math.log(third) - math.log(0.5 + EPS)) + third * (
        math.log(third) - math.log(EPS)
    )
    kl_single = 2 * third * (math.log(third) - math.log(EPS)) + third * (
        math.log(third) - math.log(1 + EPS)
    )
    one_direction = (2 * kl_shared + kl_single) / 3
    got = sdm_loss_from_similarity(sim, places, tau=1.0, eps=EPS)
    assert got.item() == pytest.approx(2 * one_direction, rel=1e-5)
    # Treating the pair as different places would punish the correct same-place match.
    wrong = sdm_loss_from_similarity(sim, torch.tensor([5, 6, 8]), tau=1.0, eps=EPS)
    assert wrong.item() > got.item()


# Rows: images, columns: texts. Items 0 and 1 share place 0, item 2 is place 1.
HI_SIM = torch.tensor(
    [
        [0.9, 0.8, 0.3],
        [0.7, 0.6, 0.55],
        [0.2, 0.4, 0.95],
    ]
)
HI_PLACES = torch.tensor([0, 0, 1])


def test_hi_picks_hardest_other_place_negatives() -> None:
    margin = 1.0
    # d^2 = 2 - 2 s.  Positives: d00 = 0.2, d11 = 0.8, d22 = 0.1.
    # Anchor 0: only text 2 / image 2 are other-place (text 1 at 0.8 is same place, ignored).
    a0 = max(0.0, 0.2 - (2 - 2 * 0.3) + margin) + max(0.0, 0.2 - (2 - 2 * 0.2) + margin)
    # Anchor 1: negatives text 2 (s=0.55) and image 2 (s=0.4).
    a1 = max(0.0, 0.8 - (2 - 2 * 0.55) + margin) + max(0.0, 0.8 - (2 - 2 * 0.4) + margin)
    # Anchor 2: hardest text is text 1 (0.4 > 0.2), hardest image is image 1 (0.55 > 0.3).
    a2 = max(0.0, 0.1 - (2 - 2 * 0.4) + margin) + max(0.0, 0.1 - (2 - 2 * 0.55) + margin)
    assert (a0, a1, a2) == pytest.approx((0.0, 1.5, 0.2))
    got = hi_loss_from_similarity(HI_SIM, HI_PLACES, margin=margin)
    assert got.item() == pytest.approx((a0 + a1 + a2) / 3, rel=1e-5)
    # If same-place items counted as negatives, anchor 0 would pay for text 1 / image 1.
    all_distinct = hi_loss_from_similarity(HI_SIM, torch.tensor([0, 1, 2]), margin=margin)
    assert all_distinct.item() > got.item()


def test_hi_on_embeddings_and_fine_tokens() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # s = [[0.6, 0], [0.8, 1]]; d^2: pos 0.8 and 0.0.
    # anchor 0: text 1 d^2 = 2, image 1 d^2 = 2 - 1.6 = 0.4 -> [0.8-2+0.5]+ + [0.8-0.4+0.5]+
    # anchor 1: text 0 d^2 = 0.4, image 0 d^2 = 2     -> [0-0.4+0.5]+ + [0-2+0.5]+
    expected = ((0.0 + 0.9) + (0.1 + 0.0)) / 2
    assert hi_loss(img, txt, torch.tensor([0, 1]), margin=0.5).item() == pytest.approx(expected)
    # Fine features: d^2 of the 1/sqrt(Q)-scaled token sets equals 2 - 2 * mean cosine.
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=gen), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=gen), dim=-1)
    s = pairwise_similarity(a, b)
    d2 = torch.cdist(a.flatten(1) / 2, b.flatten(1) / 2) ** 2
    assert torch.allclose(d2, 2 - 2 * s, atol=1e-5)


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_multi_similarity_with_miner() -> None:
    # Angles 0, 60 | 90, 180 degrees; labels [0, 0, 1, 1].
    emb = torch.tensor([_unit(0), _unit(60), _unit(90), _unit(180)])
    labels = torch.tensor([0, 0, 1, 1])
    alpha, beta, base, m = 2.0, 50.0, 0.5, 0.1
    c30 = math.sqrt(3) / 2
    # cos: (0,1)=0.5 (0,2)=0 (0,3)=-1 (1,2)=c30 (1,3)=-0.5 (2,3)=0
    # Anchor 0: weakest pos 0.5; negatives 0 and -1 are both < 0.5 - 0.1 -> dropped;
    #           strongest neg 0 -> positive 0.5 - 0.1 >= 0 dropped. Loss 0.
    # Anchor 3: weakest pos 0; negatives -1, -0.5 dropped; strongest neg -0.5 -> positive
    #           0 - 0.1 >= -0.5 dropped. Loss 0.
    # Anchor 1: pos {0.5} kept (0.4 < c30); negs: c30 kept, -0.5 dropped.
    l1 = (
        math.log(1 + math.exp(-alpha * (0.5 - base))) / alpha
        + math.log(1 + math.exp(beta * (c30 - base))) / beta
    )
    # Anchor 2: pos {0} kept (-0.1 < c30); negs: 0 kept (0.1 > 0), c30 kept.
    l2 = (
        math.log(1 + math.exp(-alpha * (0 - base))) / alpha
        + math.log(1 + math.exp(beta * (0 - base)) + math.exp(beta * (c30 - base))) / beta
    )
    expected = (0 + l1 + l2 + 0) / 4
    got = multi_similarity_loss(emb, labels, alpha, beta, base, miner_margin=m)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # A huge margin keeps every pair: the easy pairs then add loss.
    unmined = multi_similarity_loss(emb, labels, alpha, beta, base, miner_margin=10.0)
    assert unmined.item() > got.item()


def test_cmpl_loss_combines_eq6() -> None:
    gen = torch.Generator().manual_seed(1)
    g_i, g_t = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    f_i = {2: torch.randn(4, 3, 5, generator=gen), 4: torch.randn(4, 3, 5, generator=gen)}
    f_t = {2: torch.randn(4, 3, 5, generator=gen), 4: torch.randn(4, 3, 5, generator=gen)}
    places = torch.tensor([0, 0, 1, 1])
    cfg = CMPLConfig(lambda_gs=0.5, lambda_h=0.25, lambda_vpr=2.0)
    total, terms = CMPLLoss(cfg)(ImageFeatures(g_i, f_i), TextFeatures(g_t, f_t), places)
    assert set(terms) == {"gs", "ls/2", "hi/2", "ls/4", "hi/4", "vpr", "total"}
    local = sum(terms[k] for k in ("ls/2", "hi/2", "ls/4", "hi/4"))
    expected = 0.5 * terms["gs"] + 0.25 * local + 2.0 * terms["vpr"]
    assert total.item() == pytest.approx(float(expected), rel=1e-6)


def test_cmpl_loss_aux_weight_scales_fine_and_vpr_only() -> None:
    gen = torch.Generator().manual_seed(2)
    g_i = torch.randn(4, 6, generator=gen, requires_grad=True)
    g_t = torch.randn(4, 6, generator=gen)
    f_i = {2: torch.randn(4, 3, 5, generator=gen, requires_grad=True)}
    f_t = {2: torch.randn(4, 3, 5, generator=gen)}
    places = torch.tensor([0, 0, 1, 1])
    cfg = CMPLConfig(lambda_gs=0.5, lambda_h=0.25, lambda_vpr=2.0)
    loss = CMPLLoss(cfg)
    feats = (ImageFeatures(g_i, f_i), TextFeatures(g_t, f_t), places)
    _, full = loss(*feats)
    total, terms = loss(*feats, aux_weight=0.3)
    # Every term is still reported unscaled; only the total weights the aux terms.
    assert set(terms) == set(full)
    local = terms["ls/2"] + terms["hi/2"]
    expected = 0.5 * terms["gs"] + 0.3 * (0.25 * local + 2.0 * terms["vpr"])
    assert total.item() == pytest.approx(float(expected), rel=1e-6)
    # Weight 0: the fine features stay in the graph but get exactly zero gradient.
    total0, _ = loss(*feats, aux_weight=0.0)
    assert total0.item() == pytest.approx(0.5 * float(terms["gs"]), rel=1e-6)
    total0.backward()
    assert f_i[2].grad is not None and torch.count_nonzero(f_i[2].grad) == 0
