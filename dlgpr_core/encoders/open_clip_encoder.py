"""The Encoder protocol around any open_clip model.

One wrapper serves the embedded default (custom towers + trained heads), published open_clip
models (for users with internet or a downloaded checkpoint) and future fine-tunes, so the map
database never needs to know which one it got.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import l2_normalise
from .checkpoints import load_partial, sha256_file
from .tokenization import TruncatingTokenizer
from .towers import TowerConfig, build_from_config, weight_identities

log = logging.getLogger(__name__)


class MissingWeightsError(RuntimeError):
    """An encoder would run with randomly initialised parameters."""


def pick_device(device: str | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class OpenClipEncoder:
    """Batched, normalised image/text embeddings from an open_clip model.

    Build it with `from_config` or `from_open_clip`; the constructor takes an assembled model
    and is meant for those and for tests.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: TruncatingTokenizer,
        preprocess: Callable[[Image.Image], torch.Tensor],
        identity: Mapping[str, Any],
        *,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.device = pick_device(device)
        # Any: open_clip models are duck-typed (encode_image/encode_text), not one class.
        self.model: Any = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.identity = dict(identity)
        blob = json.dumps(self.identity, sort_keys=True, default=str).encode()
        name = str(self.identity.get("name", "open_clip"))
        self._fingerprint = f"{name}-{hashlib.sha256(blob).hexdigest()[:20]}"
        self._dim = self._infer_dim()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: TowerConfig | Mapping[str, Any] | str | Path,
        *,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        allow_random: bool = False,
        batch_size: int = 32,
    ) -> OpenClipEncoder:
        """A custom-tower model (timm image tower + HF text tower) from a config.

        `checkpoint` holds the parameters trained on top of the towers (projections, logit
        scale); without it the heads would be random, which raises unless `allow_random`.
        """
        if isinstance(config, str | Path):
            config = TowerConfig.from_file(config)
        elif not isinstance(config, TowerConfig):
            config = TowerConfig.from_mapping(config)
        built = build_from_config(config)
        loaded = set(built.loaded_params)
        weights: list[dict[str, Any]] = [
            {"role": "tower", **w} for w in weight_identities(built.weight_files)
        ]
        if checkpoint is not None:
            loaded |= load_partial(built.model, checkpoint)
            weights.append(_checkpoint_identity(checkpoint))
        _require_weights(built.model, loaded, allow_random, what=config.name)
        identity = {
            "name": config.name,
            "config": config.as_identity(),
            "weights": weights,
            "random": _random_identity(built.model, loaded),
        }
        tokenizer = TruncatingTokenizer(
            built.tokenizer, built.tokenizer.context_length, trim_padding=True
        )
        return cls(
            built.model, tokenizer, built.preprocess, identity, device=device, batch_size=batch_size
        )

    @classmethod
    def from_open_clip(
        cls,
        model_name: str,
        pretrained: str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        allow_random: bool = False,
        batch_size: int = 32,
    ) -> OpenClipEncoder:
        """Any open_clip model: `pretrained` is an open_clip tag (downloads; needs internet),
        a local checkpoint file, or None with `checkpoint` covering the whole model."""
        import open_clip

        if pretrained is None and checkpoint is None and not allow_random:
            raise MissingWeightsError(
                f"open_clip model {model_name!r} has no weights: pass pretrained=<tag or path> "
                "or checkpoint=<file> (allow_random=True exists for plumbing tests only)"
            )
        model = open_clip.create_model(
            model_name,
            pretrained=str(pretrained) if pretrained is not None else None,
            device="cpu",
            weights_only=True,
        )
        from open_clip.transform import PreprocessCfg, image_transform_v2

        preprocess = image_transform_v2(
            PreprocessCfg(**model.visual.preprocess_cfg), is_train=False
        )
        weights: list[dict[str, Any]] = []
        loaded: set[str] = set()
        if pretrained is not None:
            loaded = {n for n, _ in model.named_parameters()}
            pre_path = Path(str(pretrained))
            weights.append(
                {"role": "pretrained", **weight_identities([pre_path])[0]}
                if pre_path.exists()
                else {"role": "pretrained", "tag": str(pretrained)}
            )
        if checkpoint is not None:
            loaded |= load_partial(model, checkpoint)
            weights.append(_checkpoint_identity(checkpoint))
        _require_weights(model, loaded, allow_random, what=model_name)
        raw_tok = open_clip.get_tokenizer(model_name)
        context = int(getattr(raw_tok, "context_length", None) or model.context_length)
        identity = {
            "name": model_name,
            "config": {"open_clip_model": model_name},
            "weights": weights,
            "random": _random_identity(model, loaded),
        }
        from open_clip.hf_model import HFTextEncoder

        text = getattr(model, "text", None)
        tokenizer = TruncatingTokenizer(
            raw_tok, context, trim_padding=isinstance(text, HFTextEncoder)
        )
        return cls(model, tokenizer, preprocess, identity, device=device, batch_size=batch_size)

    # -- Encoder protocol --------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in chunk])
            with self._inference():
                feats = self.model.encode_image(batch.to(self.device))
            out.append(feats.float().cpu().numpy())
        return l2_normalise(np.concatenate(out))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        # Length-sorted batches waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            tokens = self.tokenizer([texts[i] for i in idx])
            with self._inference():
                feats = self.model.encode_text(tokens.to(self.device))
            out[idx] = feats.float().cpu().numpy()
        return l2_normalise(out)

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    yield
            else:
                yield

    def _infer_dim(self) -> int:
        text = getattr(self.model, "text", None)
        width = getattr(text, "output_dim", None)
        if width is None:
            proj = getattr(self.model, "text_projection", None)
            width = proj.shape[1] if proj is not None else None
        if width is None:
            with torch.inference_mode():
                width = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[1])
        return int(width)


def _checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """The trained checkpoint is small, so its content is hashed (name/size could collide
    between two trainings)."""
    path = Path(path)
    return {"role": "checkpoint", "sha256": sha256_file(path)}


def _unloaded(model: nn.Module, loaded: set[str]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n not in loaded}


def _random_identity(model: nn.Module, loaded: set[str]) -> str | None:
    """Random parameters differ at every load, so they must enter the fingerprint by value:
    two randomly initialised encoders are not comparable."""
    missing = sorted(_unloaded(model, loaded))
    if not missing:
        return None
    params = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in missing:
        digest.update(name.encode())
        digest.update(params[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _require_weights(model: nn.Module, loaded: set[str], allow_random: bool, what: str) -> None:
    missing = _unloaded(model, loaded)
    if missing and not allow_random:
        shown = ", ".join(sorted(missing)[:6])
        raise MissingWeightsError(
            f"{what}: {len(missing)} parameters would be randomly initialised ({shown}, ...); "
            "pass a trained checkpoint (allow_random=True exists for plumbing tests only)"
        )
    if missing:
        log.warning(
            "%s: %d parameters are randomly initialised (allow_random=True)", what, len(missing)
        )
