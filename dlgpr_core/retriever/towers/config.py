"""Configuration of CMPL on the frozen pretrained towers (dlgpr-lite's EfficientNet-Lite0 and
all-MiniLM-L6-v2).

It is a `CMPLConfig`, so the fine branch (queries, width, saliency keep ratio), the loss
terms of Eq. 6 with their switches and weights, the score weights and the Table 3 ablation
presets mean exactly what they mean for the open_clip CMPL. Three fields are read for the
towers: `backbone` names the JSON model config whose pretrained towers are tapped
("dlgpr-lite": the shipped one), `levels` are the image trunk's output strides and
`text_levels` the MiniLM layers paired with them. Both towers are always frozen (the point:
1,000 training places cannot learn a vision tower), so `pretrained`, `long_text` and
`lock_text` have no meaning here and `pretrained` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ..config import ABLATION_PRESETS, CMPLConfig

TOWERS_DEFAULT = "dlgpr-lite"
"""`backbone` value naming the shipped dlgpr-lite model config (dlgpr_core/assets)."""


class TowerCMPLConfig(CMPLConfig):
    """CMPL over cached outputs of the two frozen towers; see the module docstring."""

    backbone: str = TOWERS_DEFAULT
    levels: list[int] | None = Field(default_factory=lambda: [8, 16, 32])
    text_levels: list[int] | None = Field(default_factory=lambda: [2, 4, 6])
    # (height, width) every image is resized to before the trunk: SynthCities' own size, so
    # a stride-8 map of a view is 30 x 40 cells; other data sets are squashed to it.
    image_size: tuple[int, int] = (240, 320)
    # A text is read as a bag of segments (sentences; longer runs, e.g. an unpunctuated
    # speech transcript, cut into windows of at most this many words), each encoded by
    # MiniLM on its own: the segments' cached features make any drop/shuffle/partial of a
    # description free, and an appended answer is one more segment.
    segment_words: int = Field(default=16, ge=4)
    embed_dim: int = Field(default=256, ge=8)
    head_hidden: int = Field(default=512, ge=8)
    fine_dim: int = Field(default=128, ge=8)
    fine_heads: int = Field(default=4, ge=1)
    n_queries: int = Field(default=8, ge=1)
    sdm_tau: float = Field(default=0.07, gt=0)
    # Add a learned encoding of each cell's position to the image tokens: a CNN cell barely
    # knows where it is, and descriptions say "on the left", "at the right end".
    image_positions: bool = True

    @model_validator(mode="after")
    def _towers_only(self) -> TowerCMPLConfig:
        if self.pretrained is not None:
            raise ValueError(
                "CMPL on the towers loads both towers from backbone's model config; "
                f"pretrained must be null, got {self.pretrained!r}"
            )
        if self.levels is None or self.text_levels is None:
            raise ValueError("set levels (image strides) and text_levels (MiniLM layers)")
        if len(self.levels) != len(self.text_levels):
            raise ValueError(
                f"levels {self.levels} do not pair with text_levels {self.text_levels}"
            )
        return self

    def image_strides(self) -> list[int]:
        """The strides the fine branch reads (the deepest only with last_level_only)."""
        assert self.levels is not None
        levels = sorted(self.levels)
        return levels[-1:] if self.last_level_only else levels

    def level_pairs(self) -> list[tuple[int, int]]:
        """(image stride, MiniLM layer) of each fine level, by depth."""
        assert self.levels is not None and self.text_levels is not None
        pairs = list(zip(sorted(self.levels), sorted(self.text_levels), strict=True))
        return pairs[-1:] if self.last_level_only else pairs

    def towers_config_path(self) -> Path:
        """The JSON model config of the towers."""
        if self.backbone == TOWERS_DEFAULT:
            from dlgpr_core.encoders.factory import DEFAULT_CONFIG

            return DEFAULT_CONFIG
        return Path(self.backbone)


def tower_ablation_preset(name: str, base: TowerCMPLConfig | None = None) -> TowerCMPLConfig:
    """A Table 3 row's switches applied to a tower config (`config.ablation_preset` for
    the towers)."""
    if name not in ABLATION_PRESETS:
        raise KeyError(f"unknown ablation preset {name!r}; known: {sorted(ABLATION_PRESETS)}")
    data: dict[str, Any] = (base or TowerCMPLConfig()).to_dict() | ABLATION_PRESETS[name]
    return TowerCMPLConfig.model_validate(data)
