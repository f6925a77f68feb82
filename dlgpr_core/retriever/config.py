"""CMPL retriever configuration, kept as plain data.

Every architectural and loss choice of the paper (Sec. 4.2, Eq. 4-6) is a field here, so a
Table 3 ablation row is a small patch of this object rather than a code path, and a checkpoint
is fully described by the JSON written beside its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# The paper taps blocks {3, 6, 9, 12} of a 12-block tower: evenly spaced quarters.
PAPER_LEVEL_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


class LongTextConfig(BaseModel):
    """How descriptions longer than CLIP's 77 positions are handled (Long-CLIP, Sec. 5.1)."""

    model_config = ConfigDict(extra="forbid")

    stretch_positions: bool = True
    keep_positions: int = Field(default=20, ge=0)
    stretch_factor: int = Field(default=4, ge=1)
    # Text that still does not fit is never cut silently: "truncate" logs how many tokens were
    # lost, "chunk" encodes every piece and averages the embeddings.
    overflow: Literal["truncate", "chunk"] = "truncate"
    max_chunks: int = Field(default=8, ge=1)


class CMPLConfig(BaseModel):
    """Backbone, fine-grained branch, loss terms and their switches."""

    model_config = ConfigDict(extra="forbid")

    # An open_clip model name ("ViT-B-16") or an inline open_clip model config dict
    # ({"embed_dim", "vision_cfg", "text_cfg", ...}) for small from-scratch models.
    backbone: str | dict[str, Any] = "ViT-B-16"
    # open_clip pretrained tag or a local CLIP checkpoint path; None means random weights,
    # which the factory only accepts with allow_random=True.
    pretrained: str | None = None

    # 1-based indices of the blocks whose output feeds the fine branch; None scales the
    # paper's {3, 6, 9, 12} to the real depth of each tower.
    levels: list[int] | None = None
    # 1-based text tower layers paired by position with the vision levels, for text towers of a
    # different depth (MiniLM has 6 layers against a ViT's 8 or 12); None applies `levels`
    # (or the paper's quarters) to the text depth.
    text_levels: list[int] | None = None
    # Keep only the deepest of those levels (the single-level rows of the ablation).
    last_level_only: bool = False
    n_queries: int = Field(default=16, ge=1)
    fine_dim: int = Field(default=256, ge=8)
    fine_heads: int = Field(default=8, ge=1)
    fine_mlp_ratio: float = Field(default=4.0, gt=0)
    keep_ratio: float = Field(default=0.5, gt=0.0, le=1.0)

    long_text: LongTextConfig = Field(default_factory=LongTextConfig)

    # LiT-style locking of a pretrained text tower: its projection always trains, and the last
    # `lock_text_unlocked_layers` layers too, so alignment cannot wash out the pretrained
    # language knowledge that robustness to unseen wording relies on.
    lock_text: bool = False
    lock_text_unlocked_layers: int = Field(default=0, ge=0)

    use_fine: bool = True
    use_saliency: bool = True
    use_local_sdm: bool = True
    use_hi: bool = True
    use_vpr: bool = True

    lambda_gs: float = 1.0
    lambda_h: float = 1.0
    lambda_vpr: float = 1.0

    sdm_tau: float = Field(default=0.02, gt=0)
    sdm_eps: float = Field(default=1e-8, gt=0)
    hi_margin: float = 0.2
    # pytorch-metric-learning's MS defaults; MixVPR trains with alpha=1, beta=50, base=0.
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    ms_miner_margin: float = 0.1

    # Retrieval score = global cosine + score_fine_weight * weighted mean of level scores.
    score_fine_weight: float = 1.0
    score_level_weights: list[float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CMPLConfig:
        if not self.use_fine and (self.use_local_sdm or self.use_hi):
            raise ValueError("use_local_sdm and use_hi need the fine branch (use_fine=True)")
        if self.levels is not None:
            if not self.levels or any(level < 1 for level in self.levels):
                raise ValueError(f"levels must be non-empty, 1-based block indices: {self.levels}")
            if len(set(self.levels)) != len(self.levels):
                raise ValueError(f"levels repeat an index: {self.levels}")
        if self.text_levels is not None:
            tl = self.text_levels
            if not tl or any(level < 1 for level in tl) or len(set(tl)) != len(tl):
                raise ValueError(f"text_levels must be distinct 1-based layer indices: {tl}")
            if self.levels is not None and len(tl) != len(self.levels):
                raise ValueError(f"text_levels {tl} do not pair up with levels {self.levels}")
        if (
            self.score_level_weights is not None
            and self.levels is not None
            and len(self.score_level_weights) != len(self.levels)
        ):
            raise ValueError("score_level_weights must have one weight per level")
        if self.fine_dim % self.fine_heads:
            raise ValueError("fine_dim must be divisible by fine_heads")
        return self

    @property
    def saliency_active(self) -> bool:
        """Token selection only changes anything when it keeps fewer than all tokens."""
        return self.use_fine and self.use_saliency and self.keep_ratio < 1.0

    def resolve_levels(self, depth: int) -> list[int]:
        """Levels for a tower with `depth` blocks (validated against it)."""
        if self.levels is not None:
            levels = sorted(self.levels)
            if levels[-1] > depth:
                raise ValueError(f"level {levels[-1]} exceeds the tower depth {depth}")
        else:
            levels = sorted({max(1, int(depth * f + 0.5)) for f in PAPER_LEVEL_FRACTIONS})
        return levels[-1:] if self.last_level_only else levels

    def resolve_text_levels(self, depth: int) -> list[int]:
        """Text layers for a text tower with `depth` layers, in the order of the vision levels."""
        if self.text_levels is None:
            return self.resolve_levels(depth)
        levels = sorted(self.text_levels)
        if levels[-1] > depth:
            raise ValueError(f"text level {levels[-1]} exceeds the text tower depth {depth}")
        return levels[-1:] if self.last_level_only else levels

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CMPLConfig:
        return cls.model_validate(data)

    def save(self, path: str | Path) -> None:
        """Write JSON or YAML, chosen by the file suffix."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CMPLConfig:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        return cls.from_dict(data)


# Table 3 rows as patches on a base config. Rows are cumulative in the order of the table.
# Token selection only acts on the fine branch, so the "+vpr+tokensel" row runs the fine
# branch (local SDM on the selected tokens) at the deepest level only; "+hsdm" makes it
# progressive over all levels.
ABLATION_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {
        "use_fine": False,
        "use_saliency": False,
        "use_local_sdm": False,
        "use_hi": False,
        "use_vpr": False,
        "last_level_only": False,
    },
    "+vpr+tokensel": {
        "use_fine": True,
        "use_saliency": True,
        "use_local_sdm": True,
        "use_hi": False,
        "use_vpr": True,
        "last_level_only": True,
    },
    "+hsdm": {
        "use_fine": True,
        "use_saliency": True,
        "use_local_sdm": True,
        "use_hi": False,
        "use_vpr": True,
        "last_level_only": False,
    },
    "+hi": {
        "use_fine": True,
        "use_saliency": True,
        "use_local_sdm": True,
        "use_hi": True,
        "use_vpr": True,
        "last_level_only": False,
    },
}
# The paper lists "Full" apart from "+HI" but names no further component, so here "full" is
# everything this implementation has, i.e. the same switches as "+hi".
ABLATION_PRESETS["full"] = dict(ABLATION_PRESETS["+hi"])


def ablation_preset(name: str, base: CMPLConfig | None = None) -> CMPLConfig:
    """The config of one Table 3 row, applied on top of `base` (default: all defaults)."""
    if name not in ABLATION_PRESETS:
        raise KeyError(f"unknown ablation preset {name!r}; known: {sorted(ABLATION_PRESETS)}")
    data = (base or CMPLConfig()).to_dict() | ABLATION_PRESETS[name]
    return CMPLConfig.from_dict(data)
