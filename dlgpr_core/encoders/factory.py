"""Named ways to get an encoder, so that configs and command lines can say which one.

Forms accepted by `create_encoder`:
- ``"dlgpr-lite"``: the embedded default (package towers + the shipped trained heads);
- ``"dlgpr-cmpl"``: CMPL on the same frozen towers (the shipped asset
  ``assets/dlgpr_cmpl``: heads and fine branch only), i.e. ``cmpl:<that directory>``;
- ``"open_clip:<model>:<pretrained tag or checkpoint path>"``: any open_clip model;
- ``"<kind>:<argument>"`` for every kind registered in the ``dlgpr.encoders`` entry-point
  group; this package registers ``cmpl:<checkpoint directory>``, a trained CMPL retriever
  (`save_cmpl` layout; a FineEncoder when the checkpoint has a fine branch);
- a path to a JSON model config (see dlgpr_core/assets/dlgpr_lite.json for the format).

Why a registry: the encoders are the lower layer (the map database and the retriever build
on them), so the factory must not import the retriever to reach its encoder. Other kinds
plug in the same way, with no change here; in the installing package's setup.py::

    entry_points={"dlgpr.encoders": ["mykind = mypkg.encoders:load_my_encoder"]}

where ``load_my_encoder(argument, *, checkpoint, device) -> Encoder`` gets the text after
``mykind:``. `register_encoder` does the same within one process (tests, notebooks).
Entry points are listed lazily on the first prefixed spec and a kind's module is imported
only when a spec of that kind is built, so ``dlgpr-lite`` never loads the retriever.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Protocol

from .base import Encoder
from .open_clip_encoder import OpenClipEncoder

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_NAME = "dlgpr-lite"
DEFAULT_CONFIG = ASSETS / "dlgpr_lite.json"
DEFAULT_CHECKPOINT = ASSETS / "dlgpr_lite_heads.safetensors"
CMPL_NAME = "dlgpr-cmpl"
CMPL_ASSET = ASSETS / "dlgpr_cmpl"
"""The shipped CMPL-on-the-towers checkpoint (a `cmpl:` directory), loaded by that kind."""
OPEN_CLIP_PREFIX = "open_clip:"
ENTRY_POINT_GROUP = "dlgpr.encoders"


class EncoderLoader(Protocol):
    """What a registered kind provides: build an encoder from the text after ``<kind>:``."""

    def __call__(
        self, argument: str, *, checkpoint: str | Path | None, device: str | None
    ) -> Encoder: ...


# kind -> its loader, or the entry point that gives it (loaded on first use)
_registry: dict[str, EncoderLoader | EntryPoint] | None = None


def _kinds() -> dict[str, EncoderLoader | EntryPoint]:
    """The registry, filled from the entry-point group on first use."""
    global _registry
    if _registry is None:
        _registry = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            known = _registry.get(ep.name)
            if isinstance(known, EntryPoint) and known.value != ep.value:
                # An editable install can be seen twice (source egg-info and dist-info); only
                # two different targets for one kind are worth a word.
                log.warning(
                    "encoder kind %r registered twice (%s, %s): using the first",
                    ep.name,
                    known.value,
                    ep.value,
                )
            _registry.setdefault(ep.name, ep)
    return _registry


def register_encoder(kind: str, loader: EncoderLoader) -> None:
    """Add (or replace) the loader of ``<kind>:<argument>`` specs in this process."""
    if not kind or ":" in kind or kind == OPEN_CLIP_PREFIX.rstrip(":"):
        raise ValueError(f"invalid encoder kind {kind!r}")
    _kinds()[kind] = loader


def registered_kinds() -> list[str]:
    """The kinds of ``<kind>:<argument>`` spec that registered loaders accept."""
    return sorted(_kinds())


def _loader(kind: str) -> EncoderLoader | None:
    kinds = _kinds()
    entry = kinds.get(kind)
    if isinstance(entry, EntryPoint):
        loaded: EncoderLoader = entry.load()
        kinds[kind] = entry = loaded
    return entry


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
    if spec == CMPL_NAME:
        if not (CMPL_ASSET / "cmpl_config.json").is_file():
            raise FileNotFoundError(
                f"{CMPL_NAME}: its asset {CMPL_ASSET} is missing; reinstall the package or "
                "train it (README, 'CMPL on the pretrained towers')"
            )
        return create_encoder(f"cmpl:{CMPL_ASSET}", checkpoint=checkpoint, device=device)
    if spec.startswith(OPEN_CLIP_PREFIX):
        # Split only twice: a checkpoint path may itself contain ':' (e.g. Windows drives).
        parts = spec[len(OPEN_CLIP_PREFIX) :].split(":", 1)
        model = parts[0]
        pretrained = parts[1] if len(parts) > 1 and parts[1] else None
        return OpenClipEncoder.from_open_clip(
            model, pretrained, checkpoint=checkpoint, device=device
        )
    kind, sep, argument = spec.partition(":")
    loader = _loader(kind) if sep else None
    if loader is not None:
        return loader(argument, checkpoint=checkpoint, device=device)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return OpenClipEncoder.from_config(path, checkpoint=checkpoint, device=device)
    registered = "".join(f", '{k}:<...>'" for k in registered_kinds())
    raise ValueError(
        f"unknown encoder {spec!r}: use {DEFAULT_NAME!r}, {CMPL_NAME!r}, "
        f"'{OPEN_CLIP_PREFIX}<model>:<pretrained tag or path>'{registered} "
        f"or a JSON model config path (more kinds register through the {ENTRY_POINT_GROUP!r} "
        "entry-point group; reinstall the package, pip install -e ., if a kind it ships "
        "such as 'cmpl:' is missing)"
    )


def default_encoder(device: str | None = None) -> Encoder:
    """The embedded default, loadable offline from installed packages."""
    return create_encoder(DEFAULT_NAME, device=device)
