"""The learned evidence model: targets, the shipped annotator, training, evidence quality.

Fast CPU tests. `test_shipped_annotator_returns_valid_items` is plumbing: the items are
well-formed (inside the ontology, confidences in [0, 1], boxes inside the image).
`test_shipped_annotator_sees_a_new_city` is a coarse quality floor on a freshly
generated city (a seed no training or selection used), far below what the model measures on
the held-out Testburg (docs/results/evidence_quality_learned.md), so it fails on a broken
or wrongly loaded model, not on noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlgpr_core.data.annotations import Element, PlaceAnnotation, Region, ViewAnnotation
from dlgpr_core.evaluation.evidence_quality import EvidenceQualityTable, evidence_quality
from dlgpr_core.evidence import slots
from dlgpr_core.evidence.learned import LearnedAnnotator, create_learned_annotator
from dlgpr_core.evidence.learned.config import ConfigError, EvidenceTrainConfig
from dlgpr_core.evidence.learned.targets import IGNORE, view_targets
from dlgpr_core.evidence.learned.vocab import LabelVocab
from dlgpr_core.mapdb.evidence import EvidenceItem, ImageEvidence
from dlgpr_core.synth.city import generate_city

VOCAB = LabelVocab.from_slots()


def _view(regions: list[tuple[list[int], str]], image: str = "Images/T/a.jpg") -> ViewAnnotation:
    return ViewAnnotation(
        image=image,
        width=64,
        height=48,
        heading=0.0,
        regions=[Region(bbox=b, phrase="x", element_id=e) for b, e in regions],
    )


def test_targets_smallest_box_wins_and_attributes_stay_on_their_cells() -> None:
    # 64x48 at stride 16: a 3x4 grid, cell centres x = 8, 24, 40, 56 and y = 8, 24, 40.
    elements = [
        Element(
            id="b1",
            kind="building",
            category="bank",
            attributes={"name": "Union Savings", "colour": "red", "floors": "9"},
        ),
        Element(id="f1", kind="furniture", category="mailbox", attributes={"colour": "blue"}),
        Element(id="t1", kind="vegetation", category="tree", attributes={"species": "birch"}),
        Element(
            id="s1",
            kind="street",
            category="street",
            attributes={"width": "wide", "pavement": "cobblestones", "buildings": "1"},
        ),
    ]
    view = _view(
        [
            ([0, 0, 64, 48], "b1"),  # the whole image
            ([16, 16, 40, 48], "f1"),  # covers the centres (24, 24) and (24, 40); x1 = 40 open
            ([50, 2, 53, 6], "t1"),  # covers no centre: claims the cell of its own centre
        ]
    )
    t = view_targets(view, elements, VOCAB)
    bank, mailbox, tree = (VOCAB.class_of(c) for c in ("bank", "mailbox", "tree"))
    expected = np.array(
        [
            [bank, bank, bank, tree],
            [bank, mailbox, bank, bank],
            [bank, mailbox, bank, bank],
        ]
    )
    np.testing.assert_array_equal(t.classes, expected)
    np.testing.assert_array_equal(t.elements, np.array([[0, 0, 0, 2], [0, 1, 0, 0], [0, 1, 0, 0]]))
    red = VOCAB.value_index("colour", "red")
    blue = VOCAB.value_index("colour", "blue")
    np.testing.assert_array_equal(
        t.attributes["colour"],
        np.array([[red, red, red, IGNORE], [red, blue, red, red], [red, blue, red, red]]),
    )
    union = VOCAB.value_index("name", "Union Savings")
    name = np.full((3, 4), union)
    name[0, 3] = name[1, 1] = name[2, 1] = IGNORE  # not on the tree's or the mailbox's cells
    np.testing.assert_array_equal(t.attributes["name"], name)
    # "9" floors is outside the bank's slot vocabulary: no target anywhere.
    assert (t.attributes["floors"] == IGNORE).all()
    species = np.full((3, 4), IGNORE)
    species[0, 3] = VOCAB.value_index("species", "birch")
    np.testing.assert_array_equal(t.attributes["species"], species)
    assert t.street == {
        "width": VOCAB.street["width"].index("wide"),
        "pavement": VOCAB.street["pavement"].index("cobblestones"),
    }
    assert {VOCAB.categories[i] for i in np.flatnonzero(t.present)} == {"bank", "mailbox", "tree"}


@pytest.fixture(scope="module")
def tiny_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_city(root, "Evidenceton", 3, 2, seed=21, progress=False)
    return root


def _check_items(items: list[EvidenceItem], size: tuple[int, int]) -> None:
    known = slots.slots()
    for it in items:
        assert 0.0 <= it.confidence <= 1.0
        assert it.phrase.strip()
        assert it.category in known
        if it.attribute == slots.PRESENCE:
            assert it.value == it.category and it.category != slots.STREET
            assert it.bbox is not None
        else:
            assert it.value in slots.values(it.category, it.attribute), it
        if it.bbox is not None:
            x0, y0, x1, y1 = it.bbox
            assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], it
    # every attribute item belongs to a category reported present
    present = {it.category for it in items if it.attribute == slots.PRESENCE}
    assert {it.category for it in items if it.category != slots.STREET} <= present


@pytest.fixture(scope="module")
def shipped() -> LearnedAnnotator:
    return create_learned_annotator("", batch_size=4)


def test_shipped_annotator_returns_valid_items(
    shipped: LearnedAnnotator, tiny_city: Path, single_thread: None
) -> None:
    """Plumbing, not quality (see the module docstring)."""
    paths = sorted((tiny_city / "Images" / "Evidenceton").glob("*.jpg"))[:4]
    images = [Image.open(p).convert("RGB") for p in paths]
    images.append(images[0].resize((200, 150)))  # another size batches on its own
    results = shipped.annotate(images)
    assert len(results) == len(images)
    for im, items in zip(images, results, strict=True):
        _check_items(items, im.size)
    assert any(results), "the shipped model saw nothing in any view"
    assert shipped.name == "learned" and len(shipped.version) == 12
    assert shipped.annotate([]) == []


def test_tiny_training_run_gives_a_loadable_annotator_with_another_version(
    tmp_path: Path, tiny_city: Path, shipped: LearnedAnnotator, single_thread: None
) -> None:
    import torch
    from safetensors.torch import load_file

    from dlgpr_core.evidence.learned.train import train

    overrides = [
        f"data_root={tiny_city}",
        "train_cities=[Evidenceton]",
        "val_cities=[Evidenceton]",
        "heads.hidden=16",
        "heads.context_layers=1",
        "max_steps=2",
        "batch_size=4",
        "heads.reader.sign_weight=1.0",
        "heads.reader.occlude=0.5",
        "progress=false",
    ]
    config = EvidenceTrainConfig.from_yaml(None, [*overrides, f"out_dir={tmp_path / 'run'}"])
    result = train(config, command="test")
    assert result.best_epoch >= 1 and 0.0 <= result.validation["score"] <= 1.0
    annotator = create_learned_annotator(str(result.run_dir))
    assert annotator.version != shipped.version
    image = Image.open(next((tiny_city / "Images" / "Evidenceton").glob("*.jpg")))
    (items,) = annotator.annotate([image])
    _check_items(items, image.size)
    meta = annotator.meta["training"]
    assert meta["train_cities"] == ["Evidenceton"] and meta["command"] == "test"
    assert meta["heads_command"] == "test"
    # A run that reuses those heads keeps them and says how they were trained.
    again = EvidenceTrainConfig.from_yaml(
        None, [*overrides, f"heads_from={result.run_dir}", f"out_dir={tmp_path / 'again'}"]
    )
    again_dir = train(again, command="reader only").run_dir
    done = create_learned_annotator(str(again_dir)).meta["training"]
    assert done["command"] == "reader only" and done["heads_command"] == "test"
    first, second = (
        load_file(str(d / "evidence_lite_heads.safetensors")) for d in (result.run_dir, again_dir)
    )
    assert torch.equal(first["classes.weight"], second["classes.weight"])


def test_predicted_pooling_loss_reads_as_the_annotator_reads() -> None:
    """`predicted_pooling_weight` adds an element attribute loss pooled over every cell by the
    category head's P(category | cell), the weights the annotator reads with. On hand-made
    head outputs (one image, 2x3 cells: a red bank on four cells, a blue mailbox on one):
    with a category head that is sure and right, the added term is the own-cells term worked
    out by hand; with one that spreads the bank over the mailbox's cell, the bank reads the
    mailbox's colour logits and the term changes; and it never trains the category head."""
    import torch
    import torch.nn.functional as F

    from dlgpr_core.evidence.learned.config import HeadsConfig
    from dlgpr_core.evidence.learned.dataset import Batch
    from dlgpr_core.evidence.learned.model import EvidenceHeads, HeadOutputs
    from dlgpr_core.evidence.learned.train import losses

    model = EvidenceHeads({16: 4}, VOCAB, HeadsConfig(strides=[16], hidden=8, context_layers=0))
    bank, mailbox = VOCAB.class_of("bank"), VOCAB.class_of("mailbox")
    red, blue = VOCAB.value_index("colour", "red"), VOCAB.value_index("colour", "blue")
    classes = torch.tensor([[[bank, bank, mailbox], [bank, bank, 0]]])
    elements = torch.tensor([[[0, 0, 1], [0, 0, -1]]])
    colour = torch.tensor([[[red, red, blue], [red, red, IGNORE]]])
    batch = Batch({}, classes, elements, {"colour": colour}, {})
    torch.manual_seed(0)
    logits = torch.randn(1, len(VOCAB.attributes["colour"]), 2, 3, requires_grad=True)

    def outputs(category_logits: torch.Tensor) -> HeadOutputs:
        return HeadOutputs(
            category_logits, {"colour": logits}, {"colour": torch.zeros(1, 2, 3)}, {}
        )

    def added(category_logits: torch.Tensor) -> torch.Tensor:
        with_it, without = (
            losses(
                model,
                outputs(category_logits),
                batch,
                EvidenceTrainConfig(presence_weight=0.0, predicted_pooling_weight=w),
            )["attributes"]
            for w in (1.0, 0.0)
        )
        return with_it - without

    sure = 30.0 * F.one_hot(classes, VOCAB.n_classes).permute(0, 3, 1, 2).float()
    allowed = model.allowed("colour")
    expected = []
    for cls, cells, target in ((bank, [0, 1, 3, 4], red), (mailbox, [2], blue)):
        pooled = logits.detach().reshape(1, -1, 6)[0][:, cells].mean(-1)  # zero attention
        pooled = pooled.masked_fill(~allowed[cls], -1e9)
        expected.append(-torch.log_softmax(pooled, -1)[target])
    assert torch.isclose(added(sure), torch.stack(expected).mean(), atol=1e-4)

    spread = sure.clone()
    spread[0, bank, 0, 2] = 31.0  # the mailbox's cell now looks like the bank
    assert not torch.isclose(added(spread), added(sure), atol=1e-3)

    category = spread.clone().requires_grad_(True)
    grad_classes, grad_logits = torch.autograd.grad(
        added(category), (category, logits), allow_unused=True
    )
    assert grad_classes is None or not grad_classes.any()
    assert grad_logits is not None and grad_logits.abs().sum() > 0


def test_occlude_draws_one_band_per_chosen_strip() -> None:
    """`ReaderConfig.occlude`: each strip chosen gets exactly one vertical band, full height,
    within `OCCLUDER_WIDTH`; the others and the input are untouched; the same generator
    seed gives the same bands; chance 0 changes nothing."""
    import torch

    from dlgpr_core.evidence.learned.reader_training import OCCLUDER_WIDTH, occlude

    strips = torch.zeros(64, 3, 8, 320)
    out = occlude(strips, 0.5, torch.Generator().manual_seed(1))
    assert float(strips.abs().sum()) == 0.0  # a copy
    changed = (out != 0).any(dim=1).any(dim=1)  # (N, W): the columns drawn over
    hit = changed.any(-1)
    assert 10 < int(hit.sum()) < 54  # about half, not all or none
    for row in changed[hit]:
        cols = torch.nonzero(row).flatten()
        width = int(cols.max() - cols.min() + 1)
        assert width == len(cols)  # one contiguous band
        assert OCCLUDER_WIDTH[0] <= width <= OCCLUDER_WIDTH[1]
    band = out[hit][0][:, :, changed[hit][0]]
    assert bool((band != 0).all())  # every row of the band: full height
    again = occlude(strips, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(occlude(strips, 0.0, torch.Generator().manual_seed(1)), strips)


def test_sign_loss_by_hand() -> None:
    """`ReaderConfig.sign_weight`'s loss on the reader's attention scores, worked out by hand
    on two strips of four positions: a building on positions 0-1 and one on 1-2 of strip 0,
    one on position 3 of strip 1. Positions on no building (3 of strip 0; 0-2 of strip 1)
    are pushed down, each building's best position up; a building's other positions are left
    alone (where on it the sign hangs is not labelled)."""
    import math

    import torch

    from dlgpr_core.evidence.learned.model import NEG
    from dlgpr_core.evidence.learned.reader_training import sign_loss

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    att = torch.tensor([[2.0, -1.0, 0.5, 1.0], [0.0, -2.0, 3.0, -0.5]], requires_grad=True)
    own = torch.full((3, 4), NEG)
    own[0, :2] = 0.0
    own[1, 1:3] = 0.0
    own[2, 3] = 0.0
    loss = sign_loss(att, torch.tensor([0, 0, 1]), own)
    off = [1.0, 0.0, -2.0, 3.0]
    best = [2.0, 0.5, -0.5]
    expected = sum(bce(x, 0) for x in off) / 4 + sum(bce(x, 1) for x in best) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert att.grad is not None
    assert float(att.grad[0, 1]) == 0.0  # on a building, not its best position: untouched
    assert float(att.grad[1, 2]) > 0.0  # a bare position scored high is pushed down
    assert float(att.grad[0, 0]) < 0.0  # a building's best position is pushed up


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"heads\.hiden"):
        EvidenceTrainConfig.from_yaml(None, ["heads.hiden=3"])
    with pytest.raises(ConfigError, match=r"predicted_pooling_weight: .*greater than or equal"):
        EvidenceTrainConfig.from_yaml(None, ["predicted_pooling_weight=-1"])
    with pytest.raises(ConfigError, match=r"heads\.reader\.occlude: .*less than or equal to 1"):
        EvidenceTrainConfig.from_yaml(None, ["heads.reader.occlude=1.5"])


def _place() -> PlaceAnnotation:
    elements = [
        Element(
            id="b1",
            kind="building",
            category="bank",
            attributes={"name": "Union Savings", "colour": "red"},
        ),
        Element(
            id="f1",
            kind="furniture",
            category="bench",
            attributes={"colour": "green", "material": "wooden"},
        ),
        Element(
            id="s1",
            kind="street",
            category="street",
            attributes={"width": "wide", "pavement": "cobblestones"},
        ),
    ]
    return PlaceAnnotation(
        city="T",
        place_id=0,
        caption="c",
        description="d",
        elements=elements,
        views=[
            _view([([0, 0, 30, 40], "b1"), ([30, 30, 40, 40], "f1")], "Images/T/v1.jpg"),
            _view([([0, 0, 30, 40], "b1")], "Images/T/v2.jpg"),
        ],
    )


def _item(cat: str, attr: str, value: str, p: float) -> EvidenceItem:
    return EvidenceItem(f"{cat} {attr} {value}", p, cat, attr, value)


def test_evidence_quality_against_hand_counts(tmp_path: Path) -> None:
    v1 = [
        _item("bank", "category", "bank", 0.9),
        _item("bank", "name", "Union Savings", 0.7),
        _item("bank", "name", "Harbor Trust", 0.3),
        _item("bank", "colour", "brown", 0.6),
        _item("bench", "category", "bench", 0.4),  # below 0.5: not predicted present
        _item("bench", "colour", "green", 0.9),
        _item("tree", "category", "tree", 0.6),  # a false positive
        _item("street", "width", "wide", 0.8),
    ]
    v2 = [
        _item("bank", "category", "bank", 0.3),  # missed in this view
        _item("bank", "name", "Harbor Trust", 0.9),
        _item("street", "pavement", "cobblestones", 0.6),
    ]
    evidence = {
        "T:0": [
            ImageEvidence(1, "Images/T/v1.jpg", v1),
            ImageEvidence(2, "Images/T/v2.jpg", v2),
            ImageEvidence(3, "Images/T/elsewhere.jpg", []),
        ]
    }
    table = evidence_quality(evidence, {"T:0": _place()})

    def counts(evidence: str, level: str) -> tuple[int, int, int]:
        r = table.row(evidence, level)
        assert r is not None, (evidence, level)
        return r.ground_truth, r.predicted, r.correct

    # image level: v1 GT {bank, bench} vs {bank, tree}; v2 GT {bank} vs {}
    assert counts("presence", "image") == (3, 2, 1)
    assert counts("building name (sign)", "image") == (2, 1, 1)
    assert counts("building colour", "image") == (2, 1, 0)
    assert counts("bench colour", "image") == (1, 0, 0)
    assert counts("bench material", "image") == (1, 0, 0)
    assert counts("street width", "image") == (2, 1, 1)
    assert counts("street pavement", "image") == (2, 1, 1)
    # place level: presence max over views (bank .9, bench .4, tree .6); the name's
    # presence-weighted mean is Union .63/1.2 = .525 vs Harbor (.27 + .27)/1.2 = .45
    assert counts("presence", "place") == (2, 2, 1)
    assert counts("building name (sign)", "place") == (1, 1, 1)
    assert counts("building colour", "place") == (1, 1, 0)
    assert counts("bench colour", "place") == (1, 0, 0)
    assert counts("street width", "place") == (1, 1, 1)
    row = table.row("presence", "image")
    assert row is not None and row.precision == 0.5 and row.recall == pytest.approx(1 / 3)
    assert table.row("bench", "image") is not None  # per-category presence rows
    assert table.meta["images_without_view"] == 1 and table.meta["places"] == 1
    md, js = table.write(tmp_path / "q")
    assert "| presence | 50.0 | 33.3 | 3 | 50.0 | 50.0 | 2 |" in md.read_text()
    assert isinstance(table, EvidenceQualityTable) and js.exists()


def test_shipped_annotator_sees_a_new_city(
    shipped: LearnedAnnotator, tmp_path: Path, single_thread: None
) -> None:
    from dlgpr_core.data.annotations import read_annotations
    from dlgpr_core.data.records import namespaced_place_id

    generate_city(tmp_path, "Unseenburg", 12, 2, seed=31, progress=False)
    places = {
        namespaced_place_id(p.city, p.place_id): p
        for p in read_annotations(tmp_path / "Annotations" / "Unseenburg.jsonl")
    }
    evidence: dict[str, list[ImageEvidence]] = {}
    n = 0
    for pid, place in places.items():
        images = [Image.open(tmp_path / v.image).convert("RGB") for v in place.views]
        for view, items in zip(place.views, shipped.annotate(images), strict=True):
            n += 1
            evidence.setdefault(pid, []).append(ImageEvidence(n, view.image, items or []))
    table = evidence_quality(evidence, places)
    # Testburg (1,200 images): presence P 77.7 / R 58.3, street width and pavement 99.9+
    for name, floor in (("presence", 0.55), ("street width", 0.8), ("street pavement", 0.8)):
        row = table.row(name, "image")
        assert row is not None and row.ground_truth > 0, name
        precision, recall = row.precision, row.recall
        assert precision is not None and recall is not None, (name, row)
        assert precision >= floor and recall >= floor - 0.2, (name, row)


def test_kind_fusion_by_hand_and_through_json() -> None:
    """The reader's building kinds fused into presence: sigmoid(w_h logit(p) + w_r
    logit(s) + b) for a fitted category, the heads' presence for the others; an asset
    from before the fusion (no "kinds") keeps the heads alone."""
    from dlgpr_core.evidence.learned.decode import Calibration

    cal = Calibration(kinds={"bank": (1.0, 2.0, -1.0)})
    presence = np.array([[0.5, 0.2], [0.1, 0.9]])
    scores = np.array([[0.8, 0.9], [0.5, 0.1]])
    fused = cal.fuse_kinds(presence, scores, ["bank", "tree"])
    z = 2.0 * np.log(0.8 / 0.2) - 1.0  # logit(0.5) = 0
    assert fused[0, 0] == pytest.approx(1.0 / (1.0 + np.exp(-z)))
    assert fused[1, 0] == pytest.approx(1.0 / (1.0 + np.exp(-(np.log(0.1 / 0.9) - 1.0))))
    assert fused[:, 1] == pytest.approx(presence[:, 1])  # not fitted: the heads alone
    assert presence[0, 0] == 0.5  # the input is not modified
    assert Calibration().fuse_kinds(presence, scores, ["bank", "tree"]) is presence
    assert cal.fuse_kinds(presence, None, ["bank", "tree"]) is presence
    again = Calibration.from_json(cal.to_json())
    assert again.kinds == {"bank": (1.0, 2.0, -1.0)}
    assert Calibration.from_json({"presence": {}, "temperature": {}}).kinds == {}


@pytest.mark.parametrize(
    ("section", "entry", "named"),
    [
        ("kinds", {"bank": [1.0, 2.0]}, "calibration.kinds['bank']"),
        ("presence", {"tree": ["a", 0.0]}, "calibration.presence['tree']"),
        ("temperature", {"colour": -1.0}, "calibration.temperature['colour']"),
        ("kinds", [1.0, 2.0, 3.0], "calibration.kinds must map names"),
    ],
)
def test_malformed_calibration_names_the_entry(
    tmp_path: Path, section: str, entry: object, named: str
) -> None:
    """A hand-edited asset with a bad calibration entry fails at load with the file and the
    entry named (before: Python's unpacking error from inside the annotator); the shipped
    asset's calibration reads back unchanged."""
    import json
    import shutil

    from dlgpr_core.evidence.learned.annotator import ASSET_HEADS, ASSET_JSON, ASSETS
    from dlgpr_core.evidence.learned.decode import Calibration

    meta = json.loads((ASSETS / ASSET_JSON).read_text(encoding="utf-8"))
    assert Calibration.from_json(meta["calibration"]).to_json() == meta["calibration"]
    meta["calibration"][section] = entry
    (tmp_path / ASSET_JSON).write_text(json.dumps(meta), encoding="utf-8")
    shutil.copyfile(ASSETS / ASSET_HEADS, tmp_path / ASSET_HEADS)
    with pytest.raises(ValueError) as err:
        LearnedAnnotator.from_dir(tmp_path)
    assert named in str(err.value) and str(tmp_path) in str(err.value)
    assert "train_evidence.py" in str(err.value)


def test_fit_kinds_learns_which_reading_tells_the_kind() -> None:
    """On places where the reader's score tells the kind and the heads' presence is noise,
    the fit leans on the reader; it groups images by place (largest over views), and a
    category every place has (or none has) is left to the heads."""
    from dlgpr_core.evidence.learned.calibration import fit_kinds

    rng = np.random.default_rng(0)
    n_places, views = 200, 2
    has = rng.random(n_places) < 0.4
    place_ids = [f"p{i}" for i in range(n_places) for _ in range(views)]
    presence = rng.uniform(0.05, 0.95, size=(n_places * views, 2))  # noise for both
    scores = np.full((n_places * views, 2), 0.05)
    # the kind shows in one view of each place that has it
    for i in np.flatnonzero(has):
        scores[i * views + 1, 0] = rng.uniform(0.6, 0.95)
    present = np.zeros((n_places * views, 2), dtype=bool)
    present[::views, 0] = np.repeat(has, 1)  # visible in the other view: grouped by place
    present[:, 1] = True  # every place shows the second category
    fitted = fit_kinds(presence, scores, present, place_ids, ["bank", "tree"])
    assert set(fitted) == {"bank"}
    w_heads, w_reader, _ = fitted["bank"]
    assert w_reader > 1.0 and abs(w_heads) < 0.5 * w_reader
    from dlgpr_core.evidence.learned.decode import Calibration

    fused = Calibration(kinds=fitted).fuse_kinds(presence, scores, ["bank", "tree"])
    best = fused[:, 0].reshape(n_places, views).max(axis=1)
    assert best[has].min() > best[~has].max()  # the fused presence separates the places


def test_shipped_reader_reads_building_kinds(
    shipped: LearnedAnnotator, tiny_city: Path, single_thread: None
) -> None:
    """Plumbing of the reader's kind scores and of an annotator that fuses them (a made-up
    fusion; not quality): one score in [0, 1] per image and category, zero for categories
    without names, and the fused annotator still gives valid items."""
    import copy

    import torch

    from dlgpr_core.evidence.learned.decode import kind_scores

    paths = sorted((tiny_city / "Images" / "Evidenceton").glob("*.jpg"))[:3]
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.inference_mode():
        batch = shipped.tower.preprocess(images)
        scores = kind_scores(shipped.heads, batch, shipped.heads(shipped.tower(batch)))
    assert scores is not None and scores.shape == (3, len(shipped.vocab.categories))
    assert ((scores >= 0) & (scores <= 1)).all()
    unnamed = [
        k
        for k, c in enumerate(shipped.vocab.categories)
        if "name" not in shipped.vocab.category_values[c]
    ]
    assert unnamed and (scores[:, unnamed] == 0).all()
    fused = copy.copy(shipped)
    fused.calibration = copy.deepcopy(shipped.calibration)
    fused.calibration.kinds = {"bank": (1.0, 3.0, 0.0), "bakery": (0.5, 2.0, -1.0)}
    for im, items in zip(images, fused.annotate(images), strict=True):
        _check_items(items, im.size)


def test_building_recall_by_its_best_view() -> None:
    """The evidence-quality table splits the recall of building kinds by the building's best
    view (`building_views`), on a hand-made place of 320x240 views: a bank whole and tall in
    view 1 with only a thin lamp post before it (clear), found; a bakery in view 1 with a
    tree across the middle of its facade and cut by the frame in view 2 (behind something),
    found; a cafe 30 px tall in view 1 and at the frame's edge in view 2 (small: the better
    of the two), missed; a pharmacy only at the edge of view 2 (cut by the frame), missed."""
    from dlgpr_core.evaluation.building_views import building_view_class

    def view(regions: list[tuple[list[int], str]], image: str) -> ViewAnnotation:
        boxes = [Region(bbox=b, phrase="x", element_id=e) for b, e in regions]
        return ViewAnnotation(image=image, width=320, height=240, heading=0.0, regions=boxes)

    kinds = {"bank": "b1", "cafe": "b2", "bakery": "b3", "pharmacy": "b4"}
    elements = [Element(id=i, kind="building", category=c) for c, i in kinds.items()] + [
        Element(id="v1", kind="vegetation", category="tree"),
        Element(id="f1", kind="furniture", category="lamp post"),
    ]
    v1 = [
        ([100, 50, 160, 150], "b1"),
        ([127, 60, 135, 155], "f1"),  # 8 px wide: less than a quarter of the bank's 60
        ([200, 100, 260, 130], "b2"),
        ([10, 50, 90, 150], "b3"),
        ([35, 40, 70, 160], "v1"),  # across the bakery's middle two fifths (42-58 px)
    ]
    v2 = [([0, 50, 40, 150], "b2"), ([0, 40, 30, 150], "b3"), ([290, 50, 320, 150], "b4")]
    place = PlaceAnnotation(
        city="T",
        place_id=0,
        caption="c",
        description="d",
        elements=elements,
        views=[view(v1, "Images/T/v1.jpg"), view(v2, "Images/T/v2.jpg")],
    )
    by_element = {e.category: building_view_class(place, e) for e in elements}
    assert [by_element[c] for c in kinds] == [
        "clear",
        "small",
        "behind something",
        "cut by the frame",
    ]
    evidence = {
        "T:0": [
            ImageEvidence(1, "Images/T/v1.jpg", [_item("bank", "category", "bank", 0.9)]),
            ImageEvidence(
                2,
                "Images/T/v2.jpg",
                [
                    _item("bakery", "category", "bakery", 0.6),
                    _item("pharmacy", "category", "pharmacy", 0.2),
                ],
            ),
        ]
    }
    table = evidence_quality(evidence, {"T:0": place})
    rows = {r.evidence: (r.ground_truth, r.correct) for r in table.buildings_by_view}
    assert rows == {
        "clear": (1, 1),
        "behind something": (1, 1),
        "small": (1, 0),
        "cut by the frame": (1, 0),
    }
    assert "| cut by the frame | 1 | 0.0 |" in table.to_markdown()
