"""Named ways to get an encoder, so that configs and command lines can say which one.

Forms accepted by `create_encoder`:
- ``"dlgpr-lite"``: the embedded default (package towers + the shipped trained heads);
- ``"open_clip:<model>:<pretrained tag or checkpoint path>"``: any open_clip model;
- ``"cmpl:<checkpoint directory>"``: a trained CMPL retriever (`save_cmpl` layout); a
  FineEncoder when the checkpoint has a fine branch;
- a path to a JSON model config (see dlgpr_core/assets/dlgpr_lite.json for the format).
"""

from __future__ import annotations

from pathlib import Path

from .base import Encoder
from .open_clip_encoder import OpenClipEncoder

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_NAME = "dlgpr-lite"
DEFAULT_CONFIG = ASSETS / "dlgpr_lite.json"
DEFAULT_CHECKPOINT = ASSETS / "dlgpr_lite_heads.safetensors"
OPEN_CLIP_PREFIX = "open_clip:"
CMPL_PREFIX = "cmpl:"


def create_encoder(
    name_or_config: str | Path = DEFAULT_NAME,
    checkpoint: str | Path | None = None,
    device: str | None = None,
) -> Encoder:
    """Build an encoder; `checkpoint` overrides the default's shipped heads or adds trained
    parameters on top of an open_clip model or a JSON config."""
    spec = str(name_or_config)
    if spec == DEFAULT_NAME:
        return OpenClipEncoder.from_config(
            DEFAULT_CONFIG, checkpoint=checkpoint or DEFAULT_CHECKPOINT, device=device
        )
    if spec.startswith(OPEN_CLIP_PREFIX):
        # Split only twice: a checkpoint path may itself contain ':' (e.g. Windows drives).
        parts = spec[len(OPEN_CLIP_PREFIX) :].split(":", 1)
        model = parts[0]
        pretrained = parts[1] if len(parts) > 1 and parts[1] else None
        return OpenClipEncoder.from_open_clip(
            model, pretrained, checkpoint=checkpoint, device=device
        )
    if spec.startswith(CMPL_PREFIX):
        if checkpoint is not None:
            raise ValueError(
                "a cmpl: encoder takes its weights from its directory, not --checkpoint"
            )
        # Imported here: the retriever pulls in more of torch/open_clip than other encoders.
        from dlgpr_core.retriever.encoder import cmpl_encoder

        return cmpl_encoder(spec[len(CMPL_PREFIX) :], device=device)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return OpenClipEncoder.from_config(path, checkpoint=checkpoint, device=device)
    raise ValueError(
        f"unknown encoder {spec!r}: use {DEFAULT_NAME!r}, "
        f"'{OPEN_CLIP_PREFIX}<model>:<pretrained tag or path>', '{CMPL_PREFIX}<checkpoint dir>' "
        "or a JSON model config path"
    )


def default_encoder(device: str | None = None) -> Encoder:
    """The embedded default, loadable offline from installed packages."""
    return create_encoder(DEFAULT_NAME, device=device)
