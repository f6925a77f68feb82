"""What a CMPL training run depends on: `TrainConfig` and how it is read from YAML.

One config object describes a run completely (it is written beside every checkpoint), so a
run can be repeated or resumed from its directory alone. Unknown keys are errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlgpr_core.config import ConfigError, explain_validation_error, parse_override, set_dotted

from ..config import ABLATION_PRESETS, CMPLConfig, ablation_preset
from ..data import AugmentConfig

__all__ = ["ConfigError", "TrainConfig", "refuse_selection_on_test_cities"]


def refuse_selection_on_test_cities(
    train_cities: Sequence[str],
    val_cities: Sequence[str],
    test_cities: Sequence[str],
    source: str = "the training config",
) -> None:
    """Raise a ConfigError when a test city is among the training or validation cities.

    Validation selects the "best" checkpoint (and the reader picks settings by it), so a
    number reported on a city that validation read is a selected number, not a held-out one.
    With ``val_cities`` empty, validation is a fraction of the training places, so training
    cities are checked as well. Case-insensitive, as city directories are on some systems.
    ``source`` names what is refused (a config, or a checkpoint's saved config).
    """
    test = {c.lower() for c in test_cities}
    for role, cities in (("validation", val_cities), ("training", train_cities)):
        clash = sorted(c for c in cities if c.lower() in test)
        if clash:
            raise ConfigError(
                f"{source}: {role} cities {clash} are test cities "
                f"(test cities: {list(test_cities)}); selecting a checkpoint on a held-out "
                "city makes its number a selected one. Validate on a separate city "
                "(SynthCities: Valburg, 300 places, seed 3) and keep the test city for the "
                "final evaluation only."
            )


class TrainConfig(BaseModel):
    """Everything a run depends on. Unknown keys are errors, so a typo never falls back to a
    default silently."""

    model_config = ConfigDict(extra="forbid")

    # data
    data_root: Path
    train_cities: list[str] = Field(min_length=1)
    val_cities: list[str] = Field(default_factory=list)
    # Cities whose numbers are reported as held-out results. Validation picks the "best"
    # checkpoint, so validating on one of them would make its number a selected one; a
    # config that does so is refused (see `_held_out_cities_stay_unseen`).
    test_cities: list[str] = Field(default_factory=lambda: ["Testburg"])
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_places_per_city: int | None = Field(default=None, ge=1)
    caption_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = Field(default=0, ge=0)

    # model: an inline CMPLConfig or the path of its YAML/JSON file
    model: CMPLConfig = Field(default_factory=CMPLConfig)
    ablation: str | None = None
    allow_random: bool = False
    grad_checkpointing: bool = False

    # batch / optimisation
    P: int = Field(default=16, ge=2)
    K: int = Field(default=4, ge=1)
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    head_lr_mult: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    grad_accum: int = Field(default=1, ge=1)
    # From-scratch warm-up: the first `gs_only_warmup_steps` steps train on L_gs alone (fine
    # and VPR terms weighted 0), then their weight ramps linearly to 1 over `aux_ramp_steps`.
    # On a random model the fine terms (local SDM even without HI) otherwise flatten every
    # similarity within ~40 steps and drag the global embedding into the same collapse.
    gs_only_warmup_steps: int = Field(default=0, ge=0)
    aux_ramp_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    device: str | None = None  # None: cuda when available
    find_unused_parameters: bool = False

    # bookkeeping
    out_dir: Path = Path("runs/cmpl")
    log: Literal["csv", "tensorboard"] = "csv"
    log_every: int = Field(default=1, ge=1)
    progress: bool = True
    checkpoint_every: int | None = Field(default=None, ge=1)
    resume: bool | Path = True  # True: continue from out_dir/last when it exists
    val_every: int | None = Field(default=None, ge=1)  # None: after every epoch
    val_rerank_top: int | None = Field(default=100, ge=0)
    val_batch_size: int = Field(default=32, ge=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return CMPLConfig.load(value)
        return value

    @model_validator(mode="after")
    def _apply_ablation(self) -> TrainConfig:
        # Idempotent (a preset is a patch of switches), so re-validating a dumped config that
        # already carries the patched model gives the same model.
        if self.ablation is not None:
            if self.ablation not in ABLATION_PRESETS:
                raise ValueError(
                    f"unknown ablation {self.ablation!r}; known: {sorted(ABLATION_PRESETS)}"
                )
            self.model = ablation_preset(self.ablation, self.model)
        return self

    @model_validator(mode="after")
    def _held_out_cities_stay_unseen(self) -> TrainConfig:
        """Every way of building a run (YAML, overrides, a dumped config) passes here, so no
        run can select its checkpoint on a city it also reports as held out."""
        self.refuse_test_cities(self.test_cities)
        return self

    def refuse_test_cities(self, test_cities: Sequence[str]) -> None:
        """Raise a ConfigError when a test city would be trained or validated on.

        Callers that evaluate on cities of their own (`run_ablation`) pass them here before
        training and before reading "best"; see `refuse_selection_on_test_cities`.
        """
        refuse_selection_on_test_cities(self.train_cities, self.val_cities, test_cities)

    # -- YAML ---------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Load a YAML config, then apply dotted ``key=value`` overrides (values parsed as
        YAML: ``lr=3e-4``, ``train_cities=[A,B]``, ``model.use_hi=false``).

        ``base: other.yaml`` merges this file over another (relative to this file), and a
        ``model: file.yaml`` path is read relative to the config that names it.
        """
        data = read_yaml_tree(Path(path))
        for item in overrides:
            key, value = parse_override(item)
            _expand_model_path(data, key)
            set_dotted(data, key, value)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            header = f"invalid training config ({source}):"
            raise ConfigError(explain_validation_error(err, cls, header)) from err

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _expand_model_path(data: dict[str, Any], key: str) -> None:
    """Before a ``model.x=`` override, replace a ``model: <path>`` string (set by an earlier
    ``model=<path>`` override) by that file's CMPLConfig dict, so the override patches the
    named model instead of failing on a string."""
    model = data.get("model")
    if isinstance(model, str) and key.startswith("model."):
        data["model"] = CMPLConfig.load(model).to_dict()


def read_yaml_tree(
    path: Path,
    seen: tuple[Path, ...] = (),
    load_model: Callable[[Path], CMPLConfig] = CMPLConfig.load,
) -> dict[str, Any]:
    """A training YAML with its ``base:`` chain merged in and a ``model: <file>`` read (by
    `load_model`, relative to the file naming it); shared by the tower trainer."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config base chain loops: {[str(p) for p in (*seen, path)]}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    model = data.get("model")
    if isinstance(model, str):
        data["model"] = load_model(path.parent / model).to_dict()
    base = data.pop("base", None)
    if base is None:
        return data
    merged = read_yaml_tree(path.parent / str(base), (*seen, path), load_model)
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
