"""Static recall counting and where a training run may select its checkpoint.

Three evaluation flaws, each pinned by hand-made numbers:

* ties must count against the target (a collapsed encoder must not score a perfect recall);
* place R@k (distinct places ranked by their best image) and image R@k (the paper's Table 2:
  an image of the target among the top-k images) are different numbers, both reported;
* "best" checkpoints are selected on the validation city (Valburg), never on the test city
  the tables report (Testburg): a config or caller that would do so is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dlgpr_core.encoders.evaluate import (
    image_ranks,
    image_recall_from_embeddings,
    place_ranks,
    place_recall_from_embeddings,
    recall_from_embeddings,
)
from dlgpr_core.retriever.static_eval import EvalRow, EvalTable, run_ablation
from dlgpr_core.retriever.train import CONFIG_DUMP, ConfigError, TrainConfig

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"
ABLATION = CONFIGS / "ablation"
RETRIEVER_CONFIGS = sorted(
    [
        *CONFIGS.glob("synth_*.yaml"),
        CONFIGS / "paper_vitb16.yaml",
        *ABLATION.glob("*.yaml"),
    ]
)


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


# -- selection never on the test city ----------------------------------------------------------


@pytest.mark.parametrize("path", RETRIEVER_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_no_shipped_config_validates_or_trains_on_a_test_city(path: Path) -> None:
    cfg = TrainConfig.from_yaml(path)
    test = {c.lower() for c in cfg.test_cities}
    assert test, "a config must name the cities it keeps held out"
    assert not {c.lower() for c in cfg.val_cities} & test
    assert not {c.lower() for c in cfg.train_cities} & test
    if cfg.data_root == Path("data/synth"):
        # SynthCities: validate on Valburg when validating on a city; Testburg held out
        assert "testburg" in test
        assert cfg.val_cities in ([], ["Valburg"])


def test_a_config_that_validates_on_the_test_city_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"validation cities \['Testburg'\] are test cities"):
        TrainConfig.from_yaml(CONFIGS / "synth_default.yaml", ["val_cities=[Testburg]"])
    with pytest.raises(ConfigError, match="validation cities"):
        TrainConfig.from_yaml(CONFIGS / "synth_default.yaml", ["val_cities=[testburg]"])
    with pytest.raises(ConfigError, match=r"validation cities \['Valburg'\]"):
        TrainConfig.from_yaml(CONFIGS / "synth_default.yaml", ["test_cities=[Valburg]"])
    # no val city: validation is a split of the training places, so those are checked too
    with pytest.raises(ConfigError, match=r"training cities \['Testburg'\]"):
        TrainConfig.from_yaml(
            CONFIGS / "synth_tiny.yaml", ["train_cities=[Testburg]", "val_cities=[]"]
        )


def test_the_ablation_refuses_to_report_on_the_city_it_selects_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*_: object, **__: object) -> None:
        raise AssertionError("a refused row must not train")

    monkeypatch.setattr("dlgpr_core.retriever.train.train", no_training)
    out = [f"out_dir={tmp_path / 'row'}"]
    # evaluating on Valburg, where best/ is selected
    with pytest.raises(ConfigError, match=r"validation cities \['Valburg'\]"):
        run_ablation(ABLATION, train=True, overrides=out, cities=["Valburg"], rows=["baseline"])
    # a run directory left by a run that validated on Testburg, the default evaluation city
    run_dir = tmp_path / "row"
    (run_dir / "best").mkdir(parents=True)
    dump = {"train_cities": ["Trainville"], "val_cities": ["Testburg"]}
    (run_dir / CONFIG_DUMP).write_text(yaml.safe_dump(dump), encoding="utf-8")
    with pytest.raises(ConfigError, match="an earlier run"):
        run_ablation(ABLATION, train=True, overrides=out, rows=["baseline"])
