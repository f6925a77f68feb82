"""CMPL model plumbing on a tiny backbone built from an inline config with RANDOM weights.

Nothing here loads pretrained weights or reaches a hub: the model is a 4-block ViT (64 px,
patch 16) and a 4-block text tower (context 77, stretched to 248), built with
allow_random=True. The tests check shapes, switches, serialisation and that the losses can be
optimised, not retrieval quality.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from dlgpr_core.retriever import (
    CMPL,
    CMPLConfig,
    CMPLLoss,
    MissingWeightsError,
    ablation_preset,
    build_clip,
    cls_patch_attention,
    create_cmpl,
    load_cmpl,
    save_cmpl,
    stretch_positional_embedding,
)

TINY_BACKBONE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
}
N_PATCHES = (64 // 16) ** 2

CAPTIONS = [
    "a red brick church with a tall clock tower",
    "the same red church seen from the corner",
    "a wide avenue lined with palm trees and a gas station",
    "palm trees along the avenue next to a gas station",
]
PLACES = torch.tensor([0, 0, 1, 1])

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides: Any) -> CMPLConfig:
    base: dict[str, Any] = {
        "backbone": TINY_BACKBONE,
        "n_queries": 4,
        "fine_dim": 32,
        "fine_heads": 4,
    }
    return CMPLConfig(**(base | overrides))


def tiny_model(**overrides: Any) -> CMPL:
    torch.manual_seed(0)
    return create_cmpl(tiny_config(**overrides), allow_random=True)


@pytest.fixture(scope="module")
def model(single_thread: None) -> CMPL:
    return tiny_model().eval()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# -- long text -------------------------------------------------------------------------------


def test_stretch_positional_embedding() -> None:
    pe = torch.randn(77, 8, generator=torch.Generator().manual_seed(0))
    out = stretch_positional_embedding(pe, keep=20, factor=4)
    assert out.shape == (248, 8)
    assert torch.equal(out[:20], pe[:20])
    for i in range(56):  # old positions 20..76: every 4th new row is an old row
        assert torch.allclose(out[20 + 4 * i], pe[20 + i])
        lo = torch.minimum(pe[20 + i], pe[21 + i]) - 1e-6
        hi = torch.maximum(pe[20 + i], pe[21 + i]) + 1e-6
        for j in (1, 2, 3):
            row = out[20 + 4 * i + j]
            assert bool(((row >= lo) & (row <= hi)).all())
    assert torch.allclose(out[244], pe[76])
    step = pe[76] - pe[75]
    for j in (1, 2, 3):  # extrapolated past the old end
        assert torch.allclose(out[244 + j], pe[76] + j / 4 * step)


def test_model_is_stretched_to_248(model: CMPL) -> None:
    assert model.context_length == 248
    assert model.clip.positional_embedding.shape == (248, 64)
    assert model.clip.attn_mask.shape == (248, 248)


def test_pretrained_checkpoint_is_loaded_then_stretched(tmp_path: Path) -> None:
    # A "pretrained" CLIP checkpoint here is itself a random tiny model saved to disk.
    torch.manual_seed(1)
    source: Any = build_clip(tiny_config(), allow_random=True)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    m = create_cmpl(tiny_config(pretrained=str(path)))
    clip: Any = m.clip
    assert clip.positional_embedding.shape == (248, 64)
    assert torch.equal(clip.positional_embedding[:20], source.positional_embedding[:20])
    assert torch.equal(clip.visual.conv1.weight, source.visual.conv1.weight)


def test_random_weights_need_explicit_opt_in() -> None:
    with pytest.raises(MissingWeightsError):
        create_cmpl(tiny_config())


def test_levels_scale_with_depth() -> None:
    cfg = CMPLConfig()
    assert cfg.resolve_levels(12) == [3, 6, 9, 12]
    assert cfg.resolve_levels(8) == [2, 4, 6, 8]
    assert cfg.resolve_levels(4) == [1, 2, 3, 4]
    assert CMPLConfig(last_level_only=True).resolve_levels(12) == [12]


def test_config_round_trips_through_yaml_and_json(tmp_path: Path) -> None:
    cfg = ablation_preset("+hsdm", tiny_config(keep_ratio=0.25))
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert CMPLConfig.load(tmp_path / name) == cfg


# -- forward ---------------------------------------------------------------------------------


def test_forward_shapes(model: CMPL) -> None:
    with torch.no_grad():
        img, txt = model(images(), model.tokenize(CAPTIONS))
    assert model.levels == [1, 2, 3, 4]
    assert img.global_.shape == txt.global_.shape == (4, 32)
    assert torch.allclose(img.global_.norm(dim=-1), torch.ones(4), atol=1e-5)
    for level in (1, 2, 3, 4):
        assert img.fine[level].shape == txt.fine[level].shape == (4, 4, 32)
        assert torch.allclose(txt.fine[level].norm(dim=-1), torch.ones(4, 4), atol=1e-5)
        assert model.fine_similarity(img.fine[level], txt.fine[level]).shape == (4, 4)
    assert model.score(img, txt).shape == (4, 4)


def test_global_embeddings_match_open_clip(model: CMPL) -> None:
    # The manual block walk must give exactly open_clip's own embeddings.
    tok = model.tokenize(CAPTIONS)
    x = images()
    clip: Any = model.clip
    with torch.no_grad():
        img, txt = model(x, tok)
        assert torch.allclose(img.global_, clip.encode_image(x, normalize=True), atol=1e-5)
        assert torch.allclose(txt.global_, clip.encode_text(tok.ids, normalize=True), atol=1e-5)


@pytest.mark.parametrize(("keep_ratio", "use_saliency", "kept"), [(0.5, True, 8), (0.25, True, 4)])
def test_keep_ratio_selects_tokens(keep_ratio: float, use_saliency: bool, kept: int) -> None:
    m = tiny_model(keep_ratio=keep_ratio, use_saliency=use_saliency).eval()
    with torch.no_grad():
        img = m.encode_image(images(2))
    assert {lv: idx.shape for lv, idx in img.kept.items()} == {lv: (2, kept) for lv in (1, 2, 3, 4)}


@pytest.mark.parametrize("overrides", [{"keep_ratio": 1.0}, {"use_saliency": False}])
def test_saliency_off_keeps_every_token(overrides: dict[str, Any]) -> None:
    m = tiny_model(**overrides).eval()
    assert m.saliency is None
    with torch.no_grad():
        assert m.encode_image(images(2)).kept == {}


def test_saliency_scores_are_the_blocks_cls_attention(model: CMPL) -> None:
    visual: Any = model.clip.visual
    with torch.no_grad():
        x = visual._embeds(images(2))
        block = visual.transformer.resblocks[0]
        h = block.ln_1(x)
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)
        assert torch.allclose(cls_patch_attention(block, x), weights[:, 0, 1:], atol=1e-6)
    with torch.no_grad():
        img = model.encode_image(images(2))
        scores = cls_patch_attention(block, visual._embeds(images(2)))
    top = scores.topk(N_PATCHES // 2, dim=1).indices.sort(dim=1).values
    assert torch.equal(img.kept[1], top)


def test_overlong_text_truncates_with_warning(
    model: CMPL, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = "tree " * 300  # 300 tokens + start/end > 248
    with caplog.at_level(logging.WARNING, logger="dlgpr_core.retriever.long_text"):
        tok = model.tokenize([long_text, "short"])
    assert tok.ids.shape == (2, 248)
    assert "cut 54 tokens" in caplog.text


def test_overlong_text_chunks_and_averages() -> None:
    m = tiny_model(long_text={"overflow": "chunk"}).eval()
    long_text = "tree " * 300 + "church"
    tok = m.tokenize([long_text, "short"])
    assert tok.ids.shape == (3, 248) and tok.owner.tolist() == [0, 0, 1]
    with torch.no_grad():
        txt = m.encode_text(tok)
        rows = m.encode_text(tok.ids)
    assert txt.global_.shape == (2, 32)
    mean = torch.nn.functional.normalize(rows.global_[:2].mean(0), dim=-1)
    assert torch.allclose(txt.global_[0], mean, atol=1e-5)
    assert torch.allclose(txt.global_[1], rows.global_[2], atol=1e-5)
    assert txt.fine[4].shape == (2, 4, 32)


# -- checkpoints -----------------------------------------------------------------------------


def test_save_load_round_trip(model: CMPL, tmp_path: Path) -> None:
    save_cmpl(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = load_cmpl(tmp_path / "ckpt")
    assert loaded.config == model.config
    tok = model.tokenize(CAPTIONS)
    with torch.no_grad():
        a_img, a_txt = model(images(), tok)
        b_img, b_txt = loaded(images(), tok)
    assert torch.equal(a_img.global_, b_img.global_)
    assert torch.equal(a_txt.global_, b_txt.global_)
    for level in model.levels:
        assert torch.equal(a_img.fine[level], b_img.fine[level])
        assert torch.equal(a_txt.fine[level], b_txt.fine[level])


# -- losses and ablation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "terms"),
    [
        ("baseline", {"gs"}),
        ("+vpr+tokensel", {"gs", "ls/4", "vpr"}),
        ("+hsdm", {"gs", "ls/1", "ls/2", "ls/3", "ls/4", "vpr"}),
        ("+hi", {"gs", "vpr"} | {f"{k}/{lv}" for k in ("ls", "hi") for lv in (1, 2, 3, 4)}),
        ("full", {"gs", "vpr"} | {f"{k}/{lv}" for k in ("ls", "hi") for lv in (1, 2, 3, 4)}),
    ],
)
def test_ablation_presets_switch_terms(preset: str, terms: set[str]) -> None:
    cfg = ablation_preset(preset, tiny_config())
    torch.manual_seed(0)
    m = create_cmpl(cfg, allow_random=True)
    with torch.no_grad():
        img, txt = m(images(), m.tokenize(CAPTIONS))
        _, got = CMPLLoss(cfg)(img, txt, PLACES)
    assert set(got) - {"total"} == terms
    assert (m.extractor is None) == (preset == "baseline")


def test_adam_lowers_total_loss() -> None:
    m = tiny_model(keep_ratio=0.5)
    m.train()
    loss_fn = CMPLLoss(m.config)
    tok = m.tokenize(CAPTIONS)
    x = images()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        img, txt = m(x, tok)
        total, _ = loss_fn(img, txt, PLACES)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    with torch.no_grad():
        img, txt = m(x, tok)
        final, _ = loss_fn(img, txt, PLACES)
    assert final.item() < losses[0]
