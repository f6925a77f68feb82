"""Static recall counting.

Two evaluation flaws, each pinned by hand-made numbers:

* ties must count against the target (a collapsed encoder must not score a perfect recall);
* place R@k (distinct places ranked by their best image) and image R@k (the paper's Table 2:
  an image of the target among the top-k images) are different numbers, both reported.
"""

from __future__ import annotations

import numpy as np

from dlgpr_core.encoders.evaluate import (
    image_ranks,
    image_recall_from_embeddings,
    place_ranks,
    place_recall_from_embeddings,
    recall_from_embeddings,
)
from dlgpr_core.retriever.static_eval import EvalRow, EvalTable

# -- ties count against the target -----------------------------------------------------------


def test_identical_embeddings_give_the_pessimistic_recall_not_a_perfect_one() -> None:
    """10 places, 2 images each, every embedding the same: each target ties with the 9
    other places (and their 18 images), so it ranks after all of them."""
    n_places = 10
    img = np.ones((2 * n_places, 4), np.float32) / 2.0
    txt = np.ones((n_places, 4), np.float32) / 2.0
    image_place = [f"p{i // 2}" for i in range(2 * n_places)]
    text_place = [f"p{i}" for i in range(n_places)]
    r = recall_from_embeddings(img, image_place, txt, text_place, ks=(1, 5, 10, 19))
    # place rank 9 for every query: a hit only once k covers every place
    assert r["place"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "R@19": 1.0}
    # image rank 18 (the other places' images) for every query
    assert r["image"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "R@19": 1.0}
    assert place_recall_from_embeddings(img, image_place, txt, text_place) == {
        "R@1": 0.0,
        "R@5": 0.0,
        "R@10": 1.0,
    }


def test_a_hand_made_tie_ranks_the_target_after_the_tied_place() -> None:
    # places a, b, c, one image each; query 0 (target a) scores a and b equally (1.0), c 0;
    # query 1 (target c) scores c alone highest.
    img = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    txt = np.array([[1, 0], [0, 1]], np.float32)
    places, targets = ["a", "b", "c"], ["a", "c"]
    scores = txt @ img.T
    assert place_ranks(scores, places, targets).tolist() == [1, 0]
    assert image_ranks(scores, places, targets).tolist() == [1, 0]
    r = place_recall_from_embeddings(img, places, txt, targets, ks=(1, 2))
    assert r == {"R@1": 0.5, "R@2": 1.0}
    # the target's own second image never counts against it
    img2 = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    assert image_ranks(txt @ img2.T, ["a", "a", "c"], targets).tolist() == [0, 0]


# -- place R@k and image R@k -------------------------------------------------------------------


def test_place_and_image_recall_differ_when_one_place_owns_the_top_images() -> None:
    """Target b's image is 4th of 5: place a's three images are above it, place c's below.

    By places b is 2nd (only a above it); by images it is 4th (three images above it)."""
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.1]], np.float32)
    image_place = ["a", "a", "a", "b", "c"]
    assert place_ranks(scores, image_place, ["b"]).tolist() == [1]
    assert image_ranks(scores, image_place, ["b"]).tolist() == [3]
    # the same ranking from embeddings: e_q . e_img reproduces the scores above
    img = np.stack([scores[0], np.sqrt(1 - scores[0] ** 2)], axis=1)
    txt = np.array([[1.0, 0.0]], np.float32)
    ks = (1, 2, 3, 4)
    r = recall_from_embeddings(img, image_place, txt, ["b"], ks=ks)
    assert r["place"] == {"R@1": 0.0, "R@2": 1.0, "R@3": 1.0, "R@4": 1.0}
    assert r["image"] == {"R@1": 0.0, "R@2": 0.0, "R@3": 0.0, "R@4": 1.0}
    assert image_recall_from_embeddings(img, image_place, txt, ["b"], ks=ks) == r["image"]


def test_tables_label_place_and_image_recall() -> None:
    row = EvalRow(
        "enc",
        "City",
        "generator",
        3,
        5,
        place_recall={"R@1": 0.5, "R@5": 1.0},
        image_recall={"R@1": 0.25, "R@5": 0.75},
    )
    md = EvalTable(rows=[row]).to_markdown()
    head = md.splitlines()[0]
    assert head == (
        "| encoder | city | variant | queries | images "
        "| place R@1 | place R@5 | image R@1 | image R@5 |"
    )
    assert md.splitlines()[2] == "| enc | City | generator | 3 | 5 | 50.0 | 100.0 | 25.0 | 75.0 |"
    assert "image R@k: an image of the target place" in md
