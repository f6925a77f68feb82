"""Dialogue metrics against values worked out by hand (formulas-and-formats.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from dlgpr_core.dialogue.metrics import (
    DDIConfig,
    best_rank,
    best_rank_from_ranks,
    best_ranks,
    bri,
    cumulative_recall_at_k,
    ddi,
    gain,
    ideal_gain,
    ndcg_gain,
    positive_ranks,
    prg,
    prg_from_scores,
    prg_place_rank,
    rid,
    semantic_ambiguity,
    target_image_ranks,
)


def c(r: int) -> float:
    return 1.0 / math.log2(r + 1)


# ----------------------------------------------------------------- ranks and ties


def test_best_rank_ties_are_pessimistic():
    scores = [0.9, 0.5, 0.5, 0.5, 0.1]
    mask = [False, True, False, False, False]
    # The positive (0.5) ranks after 0.9 and after both negatives tied at 0.5.
    assert best_rank(scores, mask) == 3


def test_best_rank_collapsed_retriever_ranks_last():
    # Every item scores the same: the positive comes after all 4 negatives, not first.
    assert best_rank([0.2] * 5, [False, False, True, False, False]) == 4


def test_best_rank_positives_tied_with_each_other():
    assert best_rank([0.5, 0.5, 0.7], [True, True, False]) == 1
    assert best_rank([0.8, 0.1, 0.9], [True, False, True]) == 0


def test_best_ranks_rows_and_precomputed():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4]])
    mask = np.array([[False, True, False, False], [True, False, False, True]])
    # Row 0: negatives >= 0.5 are 0.9 and 0.5 -> 2. Row 1: positive 0.4 is top -> 0.
    assert best_ranks(scores, mask).tolist() == [2, 0]
    assert best_rank_from_ranks([7, 3, 12]) == 3


def test_positive_ranks_one_indexed_with_ties():
    scores = [0.9, 0.5, 0.5, 0.5, 0.1]
    mask = [False, True, True, False, True]
    # Order: neg(0.9)=1, neg(0.5)=2, pos1=3, pos2=4 (tied positives by index), pos(0.1)=5.
    assert positive_ranks(scores, mask).tolist() == [3, 4, 5]


# ----------------------------------------------------------------- cumulative recall


def test_cumulative_recall_first_hitting_time():
    ranks = np.array(
        [
            [3, 0, 2],  # enters top-1 at round 1 (2nd round), falls out at round 2: still a hit
            [7, 12, 6],  # never in top 5, always in top 10
            [20, 15, 11],  # never in top 10
        ]
    )
    got = cumulative_recall_at_k(ranks, ks=(1, 5, 10))
    assert sorted(got) == [1, 5, 10]
    np.testing.assert_allclose(got[1], [0.0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(got[5], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(got[10], [2 / 3, 2 / 3, 2 / 3])


def test_cumulative_recall_accepts_integral_floats():
    got = cumulative_recall_at_k(np.array([[1.0, 0.0]]), ks=[1])
    np.testing.assert_allclose(got[1], [0.0, 1.0])


# ----------------------------------------------------------------- BRI


def test_bri_two_queries_three_rounds_with_worse_rank():
    ranks = [[4, 1, 3], [2, 2, 0]]
    # Running minimum: q0 b = 4, 1, 1 (the 3 is ignored); q1 b = 2, 2, 0.
    l0 = [math.log(5), math.log(2), math.log(2)]
    l1 = [math.log(3), math.log(3), math.log(1)]
    interval0 = ((l0[0] + l0[1]) / 2 + (l1[0] + l1[1]) / 2) / 2
    interval1 = ((l0[1] + l0[2]) / 2 + (l1[1] + l1[2]) / 2) / 2
    expected = (interval0 + interval1) / 2  # T = 2
    assert bri(ranks) == pytest.approx(expected)
    # ((1.151293 + 1.098612) / 2 + (0.693147 + 0.549306) / 2) / 2
    assert bri(ranks) == pytest.approx(0.8730895, abs=1e-6)
    # Without the running minimum q0's last round would count ln(4), giving a larger value.
    no_min = (interval0 + ((l0[1] + math.log(4)) / 2 + (l1[1] + l1[2]) / 2) / 2) / 2
    assert bri(ranks) < no_min


def test_bri_zero_when_rank_zero_from_round_zero():
    assert bri([[0, 0, 0], [0, 5, 2]]) == 0.0


def test_bri_single_round():
    assert bri([[3], [0]]) == pytest.approx((math.log(4) + math.log(1)) / 2)


# ----------------------------------------------------------------- gain / PRG / RID


def test_gain_and_ideal_gain():
    assert gain([1, 3]) == pytest.approx(1.0 + 1 / math.log2(4))
    assert ideal_gain(3) == pytest.approx(1.0 + 1 / math.log2(3) + 1 / math.log2(4))


def test_prg_two_positives_moving_up():
    g_prev = c(3) + c(5)
    g_new = c(1) + c(4)
    g_star = c(1) + c(2)
    expected = (g_new - g_prev) / (g_star - g_prev)
    assert prg([3, 5], [1, 4]) == pytest.approx(expected)
    assert 0.0 < prg([3, 5], [1, 4]) < 1.0
    assert prg([3, 5], [2, 1]) == pytest.approx(1.0)
    assert rid(prg([3, 5], [1, 4])) == pytest.approx(1.0 - expected)
    assert ndcg_gain([3, 5], [1, 4]) == pytest.approx((g_new - g_prev) / g_star)


def test_prg_positives_moving_down_is_negative():
    g_prev = c(1) + c(3)
    g_new = c(2) + c(6)
    g_star = c(1) + c(2)
    expected = (g_new - g_prev) / (g_star - g_prev)
    assert prg([1, 3], [2, 6]) == pytest.approx(expected)
    assert expected < -1.0  # allowed: no lower bound
    assert rid(expected) > 2.0
    assert ndcg_gain([1, 3], [2, 6]) == pytest.approx((g_new - g_prev) / g_star)


def test_prg_zero_when_previous_is_ideal():
    assert prg([2, 1], [5, 9]) == 0.0
    assert prg([1], [1]) == 0.0
    assert ndcg_gain([2, 1], [5, 9]) == pytest.approx((c(5) + c(9) - c(1) - c(2)) / (c(1) + c(2)))


def _scores_for(ranks: dict[int, int], n: int) -> list[float]:
    """Scores over n images that put image i at 1-indexed position ranks[i] (the others fill
    the remaining positions in index order)."""
    free = iter(sorted(set(range(1, n + 1)) - set(ranks.values())))
    pos = [ranks[i] if i in ranks else next(free) for i in range(n)]
    return [float(n - r) for r in pos]


def test_prg_sums_over_every_positive_image_hand_computed():
    """Eq. 2 with a 3-image target among 10 images: ranks [2, 5, 9] -> [1, 3, 4].

    G_prev = c(2) + c(5) + c(9) = 0.630930 + 0.386853 + 0.301030 = 1.318813
    G_new  = c(1) + c(3) + c(4) = 1 + 0.5 + 0.430677 = 1.930677
    G*     = c(1) + c(2) + c(3) = 2.130930
    PRG    = (1.930677 - 1.318813) / (2.130930 - 1.318813) = 0.753419
    """
    expected = (c(1) + c(3) + c(4) - c(2) - c(5) - c(9)) / (c(1) + c(2) + c(3) - c(2) - c(5) - c(9))
    assert expected == pytest.approx(0.753419, abs=1e-6)
    mask = [i < 3 for i in range(10)]  # images 0, 1, 2 belong to the target place
    before = _scores_for({0: 2, 1: 5, 2: 9}, 10)
    after = _scores_for({0: 1, 1: 3, 2: 4}, 10)
    assert positive_ranks(before, mask).tolist() == [2, 5, 9]
    assert positive_ranks(after, mask).tolist() == [1, 3, 4]
    assert prg_from_scores(before, after, mask) == pytest.approx(expected)
    assert prg([2, 5, 9], [1, 3, 4]) == pytest.approx(expected)
    # The same round seen through the place rank only (best image 2 -> 1) claims all of it:
    assert prg_place_rank(2, 1) == pytest.approx(1.0)
    # ... and a round that lifts the best image to the top while the other two fall far
    # ([2, 3, 4] -> [1, 50, 60]) is a loss by Eq. 2 but a full gain by the place rank:
    # G_prev = 0.630930 + 0.5 + 0.430677 = 1.561606 > G_new = 1 + 0.176291 + 0.168613;
    # G* - G_prev = c(1) - c(4) (c(2) and c(3) are in both), PRG = -0.380630.
    worse = (c(1) + c(50) + c(60) - c(2) - c(3) - c(4)) / (c(1) - c(4))
    assert prg([2, 3, 4], [1, 50, 60]) == pytest.approx(worse)
    assert worse == pytest.approx(-0.380630, abs=1e-6)


def test_target_image_ranks_from_a_ranked_image_list():
    ranked = ["b", "t", "a", "a", "t", "c", "t"]  # the place of each image hit, best first
    assert target_image_ranks(ranked, "t", 3).tolist() == [2, 5, 7]
    # a top-k list missing two of the target's images: they come right after the list
    assert target_image_ranks(ranked[:4], "t", 3).tolist() == [2, 5, 6]
    assert target_image_ranks(["a"], "t", 2).tolist() == [2, 3]
    with pytest.raises(ValueError, match="more than n_positives"):
        target_image_ranks(ranked, "t", 2)
    with pytest.raises(ValueError, match="n_positives"):
        target_image_ranks(ranked, "t", 0)


def test_prg_place_rank_is_the_one_positive_case():
    assert prg_place_rank(4, 2) == pytest.approx((c(2) - c(4)) / (1 - c(4)))
    assert prg_place_rank(1, 3) == 0.0  # already at the top: nothing left to gain


# ----------------------------------------------------------------- SA / DDI


def test_semantic_ambiguity_tiny_vectors():
    # cos([1,0],[1,1]) = 1/sqrt(2); cos([1,0],[3,4]) = 3/5.
    expected = 0.3 * 0.6 + 0.7 * (1 - 1 / math.sqrt(2))
    assert semantic_ambiguity([1.0, 0.0], [1.0, 1.0], [3.0, 4.0], alpha=0.3) == pytest.approx(
        expected
    )
    # A set of negatives averages its cosines: (0.6 + 0.0) / 2.
    expected_set = 0.3 * 0.3 + 0.7 * (1 - 1 / math.sqrt(2))
    got = semantic_ambiguity([2.0, 0.0], [1.0, 1.0], [[3.0, 4.0], [0.0, 1.0]], alpha=0.3)
    assert got == pytest.approx(expected_set)


def test_ddi_and_config():
    assert ddi(0.4, 0.8, w_sa=0.25, w_rid=0.75) == pytest.approx(0.25 * 0.4 + 0.75 * 0.8)
    cfg = DDIConfig()
    assert (cfg.alpha, cfg.w_sa, cfg.w_rid, cfg.tau_1, cfg.threshold) == (0.5, 0.5, 0.5, 0.05, 0.5)
    assert cfg.score(0.2, 0.6) == pytest.approx(0.5 * 0.2 + 0.5 * 0.6)
    assert cfg.keep(0.05) and not cfg.keep(0.04)
    assert cfg.is_high(0.5) and not cfg.is_high(0.49)
    with pytest.raises(ValidationError):
        DDIConfig(alpha=1.5)
    with pytest.raises(ValidationError):
        DDIConfig(beta=1.0)  # type: ignore[call-arg]


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cumulative_recall_at_k([1, 2, 3]), "2-D"),
        (lambda: cumulative_recall_at_k([[0, -1]]), "below 0"),
        (lambda: cumulative_recall_at_k(np.zeros((0, 3), dtype=int)), "empty"),
        (lambda: cumulative_recall_at_k([[0.5, 1.0]]), "non-integer"),
        (lambda: cumulative_recall_at_k([[0, 1]], ks=()), "ks is empty"),
        (lambda: cumulative_recall_at_k([[0, 1]], ks=(0,)), "positive integers"),
        (lambda: bri([0, 1, 2]), "2-D"),
        (lambda: bri([[0, -2]]), "below 0"),
        (lambda: bri([[]]), "empty"),
        (lambda: best_rank([0.1, 0.2], [True]), "shape"),
        (lambda: best_rank([0.1, 0.2], [False, False]), "no positive"),
        (lambda: best_rank([0.1, float("nan")], [True, False]), "non-finite"),
        (lambda: best_rank([], []), "empty"),
        (lambda: best_rank([0.1, 0.2], [1, 0]), "boolean"),
        (lambda: best_ranks([0.1, 0.2], [True, False]), "2-D"),
        (lambda: best_rank_from_ranks([-1, 2]), "below 0"),
        (lambda: gain([]), "empty"),
        (lambda: gain([0, 2]), "below 1"),
        (lambda: gain([2, 2]), "duplicate"),
        (lambda: prg([1, 2], [1]), "positives"),
        (lambda: ideal_gain(0), "n_pos"),
        (lambda: semantic_ambiguity([1.0, 0.0], [1.0, 0.0], [0.0, 1.0], alpha=-0.1), "alpha"),
        (lambda: semantic_ambiguity([1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0], 0.5), "dimension"),
        (lambda: semantic_ambiguity([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], 0.5), "zero vector"),
        (lambda: semantic_ambiguity([], [1.0], [1.0], 0.5), "non-empty"),
        (lambda: ddi(float("nan"), 0.1, 0.5, 0.5), "sa"),
        (lambda: ddi(0.1, 0.1, -0.5, 0.5), "non-negative"),
    ],
)
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
