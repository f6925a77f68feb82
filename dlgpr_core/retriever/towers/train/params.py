"""What a tower-CMPL training run depends on: `TowerTrainConfig` and its YAML.

The same style as `retriever.train.params` (one pydantic object, unknown keys are errors,
``base:`` chains and dotted overrides, test cities refused for training and validation),
with what differs for cached tower features: no image augmentation or workers (the towers
never run), the text augmentation instead, and the YAML says ``trainer: towers`` so that
`training/train_retriever.py` picks this trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlgpr_core.config import ConfigError, explain_validation_error, parse_override, set_dotted
from dlgpr_core.data.text_augment import TextAugmentConfig

from ...config import ABLATION_PRESETS
from ...train.params import read_yaml_tree, refuse_selection_on_test_cities
from ..config import TowerCMPLConfig, tower_ablation_preset

TRAINER = "towers"


class TowerTrainConfig(BaseModel):
    """Everything a run depends on (written beside every checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    trainer: Literal["towers"] = "towers"

    # data
    data_root: Path
    train_cities: list[str] = Field(min_length=1)
    # Validation selects best/; a held-out city (SynthCities: Valburg), never a test city.
    val_cities: list[str] = Field(min_length=1)
    test_cities: list[str] = Field(default_factory=lambda: ["Testburg"])
    max_places_per_city: int | None = Field(default=None, ge=1)
    cache_dir: Path | None = None  # None: <data_root>/.feature_cache/towers
    augment: TextAugmentConfig = Field(default_factory=TextAugmentConfig)
    augment_seed: int = 0
    # A batch row's text is the full description with this probability, else one of the
    # place's other texts (caption, augmented variants) drawn uniformly.
    description_prob: float = Field(default=0.4, ge=0.0, le=1.0)
    # Augmented validation queries per place (their own seed), beside description + caption.
    val_augment_variants: int = Field(default=2, ge=0)

    # model
    model: TowerCMPLConfig = Field(default_factory=TowerCMPLConfig)
    ablation: str | None = None

    # batch / optimisation
    P: int = Field(default=32, ge=2)
    K: int = Field(default=4, ge=1)
    epochs: int = Field(default=30, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=20, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    gs_only_warmup_steps: int = Field(default=0, ge=0)
    aux_ramp_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    device: str | None = None
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads; None: torch's choice

    # bookkeeping
    out_dir: Path = Path("runs/cmpl_towers")
    log_every: int = Field(default=10, ge=1)
    progress: bool = True
    resume: bool = True  # continue from out_dir/last when it exists
    val_every: int | None = Field(default=None, ge=1)  # None: after every epoch
    val_rerank_top: int = Field(default=50, ge=0)
    # After the run, write best/ there as the shipped asset (float16 weights), e.g.
    # write_asset=dlgpr_core/assets/dlgpr_cmpl; a finished run resumes to just this.
    write_asset: Path | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return TowerCMPLConfig.load(value)
        return value

    @model_validator(mode="after")
    def _apply_ablation(self) -> TowerTrainConfig:
        if self.ablation is not None:
            if self.ablation not in ABLATION_PRESETS:
                raise ValueError(
                    f"unknown ablation {self.ablation!r}; known: {sorted(ABLATION_PRESETS)}"
                )
            self.model = tower_ablation_preset(self.ablation, self.model)
        return self

    @model_validator(mode="after")
    def _one_city_each(self) -> TowerTrainConfig:
        if len(self.train_cities) != 1 or len(self.val_cities) != 1:
            raise ValueError(
                "the tower trainer reads one training and one validation city, got "
                f"train_cities={self.train_cities}, val_cities={self.val_cities}"
            )
        return self

    @model_validator(mode="after")
    def _held_out_cities_stay_unseen(self) -> TowerTrainConfig:
        refuse_selection_on_test_cities(self.train_cities, self.val_cities, self.test_cities)
        return self

    def cache_directory(self) -> Path:
        return self.cache_dir or Path(self.data_root) / ".feature_cache" / "towers"

    # -- YAML ---------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TowerTrainConfig:
        data = read_tower_yaml(Path(path))
        for item in overrides:
            key, value = parse_override(item)
            set_dotted(data, key, value)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TowerTrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            header = f"invalid tower training config ({source}):"
            raise ConfigError(explain_validation_error(err, cls, header)) from err

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def read_tower_yaml(path: Path) -> dict[str, Any]:
    """The YAML tree (``base:`` merged, a ``model: <file>`` read as a tower config)."""
    return read_yaml_tree(path, load_model=TowerCMPLConfig.load)


def is_tower_config(path: str | Path) -> bool:
    """Whether a training YAML (with its base chain) asks for this trainer."""
    data = read_yaml_tree(Path(path), load_model=TowerCMPLConfig.load)
    return data.get("trainer") == TRAINER
