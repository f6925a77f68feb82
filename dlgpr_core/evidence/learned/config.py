"""What a learned-evidence training run depends on, read from YAML with dotted overrides.

Two parts: `HeadsConfig` is the architecture (stored in the shipped asset, so the annotator
rebuilds exactly the trained heads) and `DecodeConfig` how outputs become evidence items
(also shipped); `EvidenceTrainConfig` adds data, optimisation and bookkeeping. Unknown keys
are errors, so a typo never falls back to a default silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlgpr_core.config import ConfigError, apply_overrides, explain_validation_error

__all__ = ["ConfigError", "DecodeConfig", "EvidenceTrainConfig", "HeadsConfig", "ReaderConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReaderConfig(_Strict):
    """The sign reader (`signs.SignReader`), trained after the heads on strips they choose."""

    enabled: bool = True
    strip_height: int = Field(default=32, ge=8)
    """Rows of the strip around the name-attention peak row: the sign band is about 10 px
    tall and the peak row lies within 7 px of its centre for 80% of validation buildings."""
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 96])
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    epochs: int = Field(default=12, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    """Strips (images) per step; each holds the signs of 2-4 buildings."""
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    sign_weight: float = Field(default=0.0, ge=0)
    """Weight of a loss on the attention score itself, read as "a sign is here": 0 off the
    columns of every named building in the strip, and its largest value over a named
    building's own columns 1 (the sign is somewhere on it; where is not labelled). Without
    it the score is trained only relative to the building's other positions, and the
    building kinds read anywhere along the strip (`decode.kind_scores`, which weighs each
    position by sigmoid(score)) pick up confident readings of bare walls and trees."""
    occlude: float = Field(default=0.0, ge=0.0, le=1.0)
    """Training augmentation: the chance that a training strip gets one random vertical
    band (8-40 px wide, a random colour with noise) drawn over it, as a tree trunk, crown or
    lamp post in front of a sign draws one. Buildings behind something in every view are
    the largest share of the kinds the reader misses (`evaluation.building_views`); 0 off."""
    combine: Literal["reader", "product"] = "product"
    """How the reader's name distribution meets the heads': replace it, or multiply the two
    (independent evidence from two views of the sign)."""


class HeadsConfig(_Strict):
    """The heads over the frozen trunk's stride-8/16/32 maps (on the stride-16 grid)."""

    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])
    """Which trunk maps feed the heads; stride 8 is folded onto the grid (space-to-depth,
    keeping its detail), stride 32 upsampled."""
    hidden: int = Field(default=128, ge=8)
    context_layers: int = Field(default=2, ge=0)
    """3x3 convolutions after the 1x1 fusion: each cell sees its neighbours (a sign cell
    learns which building it hangs on)."""
    separable: bool = True
    """Depthwise-separable 3x3 convolutions: a full 3x3 at 128 channels has 8x the
    multiply-adds (147k vs 17.5k per cell) for the same receptive field, and training time
    on 2 cores is what limits how many designs can be compared."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    attribute_pooling: Literal["mean", "attention"] = "attention"
    """How a category's cells combine into one attribute distribution per image: the
    presence-weighted mean of cell distributions, or a learned attention over the cells
    (trained per element, so it learns that one cell of the sign says more about the name
    than ten cells of wall)."""
    reader: ReaderConfig = Field(default_factory=ReaderConfig)


class DecodeConfig(_Strict):
    """How head outputs become evidence items (see `decode.py`)."""

    presence_floor: float = Field(default=0.05, ge=0.0, le=1.0)
    """Categories below this calibrated presence get no item (absence is the default)."""
    cumulative: float = Field(default=0.95, gt=0.0, le=1.0)
    """An attribute's likeliest values are reported until they cover this much mass..."""
    max_values: int = Field(default=4, ge=1)
    """...and at most this many."""
    min_value: float = Field(default=0.01, ge=0.0, le=1.0)
    """Values below this conditional probability are never reported."""


class EvidenceTrainConfig(_Strict):
    # data
    data_root: Path = Path("data/synth")
    train_cities: list[str] = Field(default_factory=lambda: ["Trainville"], min_length=1)
    val_cities: list[str] = Field(default_factory=lambda: ["Valburg"], min_length=1)
    """Model selection, calibration and thresholds; never the held-out test city."""
    max_places: int | None = Field(default=None, ge=1)
    """Per city; for tiny plumbing runs."""

    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)

    # optimisation
    epochs: int = Field(default=30, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    attribute_weight: float = Field(default=1.0, ge=0)
    presence_weight: float = Field(default=1.0, ge=0)
    """Image-level BCE on each category's largest cell probability."""
    class_balance: float = Field(default=0.5, ge=0.0, le=1.0)
    """Category CE weights frequency^-class_balance (0: unweighted)."""
    street_weight: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    predicted_pooling_weight: float = Field(default=0.0, ge=0)
    """Weight of a second per-element attribute loss pooled as reading pools: over all cells
    weighted by the (detached) predicted P(element's category | cell), not its own cells."""
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; None leaves torch's default."""

    heads_from: Path | None = None
    """A run directory whose trained heads to reuse instead of training them (the sign
    reader and the calibration are still trained and fitted here)."""
    fuse_kinds: bool = True
    """Fit the fusion of the sign reader's building kinds into presence on the validation
    city (`calibration.fit_kinds`); False ships the heads' presence alone."""

    # bookkeeping
    out_dir: Path = Path("runs/evidence_lite")
    cache_dir: Path | None = None
    """Frozen-feature cache; None = <out_dir>/features (shared by reruns of the run)."""
    feature_batch_size: int = Field(default=16, ge=1)
    progress: bool = True
    write_assets: Path | None = None
    """Directory to copy the shipped files into (dlgpr_core/assets); None = the run only."""

    def features_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out_dir / "features"

    @classmethod
    def from_yaml(
        cls, path: str | Path | None, overrides: Sequence[str] = ()
    ) -> EvidenceTrainConfig:
        """Load a YAML config (None: the defaults), then apply ``key=value`` overrides
        (values are YAML: ``lr=3e-4``, ``train_cities=[A,B]``, ``heads.hidden=64``)."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as err:
                raise ConfigError(f"cannot read config {path}: {err}") from err
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: a training config must be a YAML mapping")
            data = loaded
        apply_overrides(data, overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            header = f"invalid evidence training config ({path or 'defaults'}):"
            raise ConfigError(explain_validation_error(err, cls, header)) from err

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
