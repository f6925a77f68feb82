"""CMPL on the frozen towers: global heads plus the paper's fine-grained branch.

The module holds only what is trained; its inputs are the towers' outputs (`extract`), so
training runs over cached features and a checkpoint is a few MB. Per fine level l (an image
stride paired with a MiniLM layer):

* image: the stride's feature map as tokens (one per cell), the most salient cells kept by
  the paper's `SaliencyFilter` (scores: each cell's share in the pooled feature, resampled to
  the level's grid), distilled by the shared `FineGrainedExtractor` with level l's queries;
* text: one token per segment (its mean-pooled MiniLM state after the paired layer),
  distilled by the same extractor with the same queries.

The global embeddings are MLP heads on the pooled image feature and on the mean of the
segments' (normalised) last-layer states. The score is `CMPL.score`'s: global cosine plus
`score_fine_weight` times the level-weighted mean query-token cosine; the losses are
`CMPLLoss` (Eq. 6) unchanged, since the features are the same `ImageFeatures`/`TextFeatures`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from ..extractor import FineGrainedExtractor
from ..features import ImageFeatures, TextFeatures
from ..saliency import SaliencyFilter
from ..similarity import pairwise_similarity
from .config import TowerCMPLConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cmpl_config.json"
CHECKPOINT_FORMAT = "dlgpr-cmpl-towers/1"


@dataclass(frozen=True)
class TowerDims:
    """The widths of the towers' outputs, so the module is built without loading a tower."""

    image_channels: dict[int, int]  # stride -> channels
    pooled_dim: int
    text_width: int
    text_layers: list[int]  # MiniLM layers of the cached segment features, ascending

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TowerDims:
        channels = data["image_channels"]
        layers = data["text_layers"]
        assert isinstance(channels, dict) and isinstance(layers, list)
        return cls(
            {int(k): int(v) for k, v in channels.items()},
            int(str(data["pooled_dim"])),
            int(str(data["text_width"])),
            [int(x) for x in layers],
        )


class MLPHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: a frozen feature into the joint space."""

    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class CellPositions(nn.Module):
    """A cell's position as a feature: Fourier features of its centre's (x, y) in [-1, 1]
    through a linear map, zero at start (training begins from the plain cells). Independent
    of the grid size, so any input size works."""

    def __init__(self, channels: int, frequencies: int = 4) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(4 * frequencies, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, height: int, width: int, device: torch.device) -> Tensor:
        """[H * W, C] in the row-major order of the flattened map."""
        ys = (torch.arange(height, device=device) + 0.5) / height * 2 - 1
        xs = (torch.arange(width, device=device) + 0.5) / width * 2 - 1
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        k = torch.arange(1, self.frequencies + 1, device=device) * torch.pi
        angles = torch.cat([x.reshape(-1, 1) * k, y.reshape(-1, 1) * k], dim=1)
        out: Tensor = self.proj(torch.cat([angles.sin(), angles.cos()], dim=1))
        return out


class TowerCMPL(nn.Module):
    """See the module docstring."""

    def __init__(self, config: TowerCMPLConfig, dims: TowerDims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.level_pairs = config.level_pairs()
        missing = [s for s, _ in self.level_pairs if s not in dims.image_channels]
        missing += [t for _, t in self.level_pairs if t not in dims.text_layers]
        if missing:
            raise ValueError(f"levels {missing} are not among the towers' cached outputs")
        self.image_head = MLPHead(dims.pooled_dim, config.head_hidden, config.embed_dim)
        self.text_head = MLPHead(dims.text_width, config.head_hidden, config.embed_dim)
        self.extractor: FineGrainedExtractor | None = None
        self.saliency: SaliencyFilter | None = None
        self.positions: nn.ModuleDict | None = None
        if config.use_fine:
            strides = [s for s, _ in self.level_pairs]
            self.extractor = FineGrainedExtractor(
                strides,
                vision_width={s: dims.image_channels[s] for s in strides},
                text_width=dims.text_width,
                n_queries=config.n_queries,
                dim=config.fine_dim,
                heads=config.fine_heads,
                mlp_ratio=config.fine_mlp_ratio,
            )
            if config.saliency_active:
                self.saliency = SaliencyFilter(config.keep_ratio)
            if config.image_positions:
                self.positions = nn.ModuleDict(
                    {str(s): CellPositions(dims.image_channels[s]) for s in strides}
                )

    @property
    def levels(self) -> list[int]:
        """The fine levels (image strides) in score order; empty without the fine branch."""
        return [s for s, _ in self.level_pairs] if self.extractor is not None else []

    def encode_image(
        self, maps: dict[int, Tensor], pooled: Tensor, saliency: Tensor
    ) -> ImageFeatures:
        """maps: stride -> [B, C, H, W]; pooled [B, P]; saliency [B, h, w]."""
        glob = F.normalize(self.image_head(pooled.float()), dim=-1)
        fine: dict[int, Tensor] = {}
        kept: dict[int, Tensor] = {}
        if self.extractor is not None:
            for stride in self.levels:
                grid = maps[stride].float()
                tokens = grid.flatten(2).transpose(1, 2)  # [B, H*W, C], row-major cells
                if self.positions is not None:
                    h, w = grid.shape[-2:]
                    tokens = tokens + self.positions[str(stride)](h, w, tokens.device)
                if self.saliency is not None:
                    scores = F.interpolate(
                        saliency.float().unsqueeze(1),
                        size=grid.shape[-2:],
                        mode="bilinear",
                        align_corners=False,
                    ).flatten(1)
                    tokens, kept[stride] = self.saliency(tokens, scores)
                fine[stride] = self.extractor(stride, tokens, "image")
        return ImageFeatures(glob, fine, kept)

    def encode_text(self, segments: Tensor, mask: Tensor) -> TextFeatures:
        """segments [B, S, len(text_layers), W] (padded), mask [B, S] True for real ones."""
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every text needs at least one segment")
        segments = segments.float()
        last = F.normalize(segments[:, :, -1], dim=-1)
        weight = mask.float().unsqueeze(-1)
        mean = (last * weight).sum(1) / weight.sum(1)
        glob = F.normalize(self.text_head(mean), dim=-1)
        fine: dict[int, Tensor] = {}
        if self.extractor is not None:
            for stride, layer in self.level_pairs:
                states = segments[:, :, self.dims.text_layers.index(layer)]
                fine[stride] = self.extractor(stride, states, "text", key_padding_mask=~mask)
        return TextFeatures(glob, fine)

    def level_weights(self) -> list[float]:
        weights = self.config.score_level_weights
        n = len(self.levels)
        if weights is None:
            return [1.0 / n] * n if n else []
        weights = weights[-n:]
        total = sum(weights)
        return [w / total for w in weights]

    def score(self, img: ImageFeatures, txt: TextFeatures) -> Tensor:
        """[Bi, Bt]: global cosine + score_fine_weight * level-weighted fine similarity."""
        s = img.global_ @ txt.global_.t()
        w = self.config.score_fine_weight
        if w and img.fine and txt.fine:
            for level, lw in zip(self.levels, self.level_weights(), strict=True):
                s = s + w * lw * pairwise_similarity(img.fine[level], txt.fine[level])
        return s


def save_tower_cmpl(
    model: TowerCMPL, directory: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """``model.safetensors`` (the trained parameters: nothing of the towers) and
    ``cmpl_config.json`` (format, config, tower widths) into `directory`. `dtype`
    (float16 for a shipped asset) stores the weights in it; loading casts them back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    if dtype is None:
        save_model(model, str(weights), metadata={"format": CHECKPOINT_FORMAT})
    else:
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights), metadata={"format": CHECKPOINT_FORMAT})
    dims = asdict(model.dims)
    dims["image_channels"] = {str(k): v for k, v in model.dims.image_channels.items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(), "dims": dims}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def checkpoint_format(directory: str | Path) -> str | None:
    """The ``format`` of a CMPL checkpoint directory's config (None when unreadable)."""
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return str(fmt) if fmt is not None else None


def load_tower_cmpl(directory: str | Path, device: str | torch.device = "cpu") -> TowerCMPL:
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory} is not a {CHECKPOINT_FORMAT} checkpoint")
    config = TowerCMPLConfig.model_validate(meta["config"])
    model = TowerCMPL(config, TowerDims.from_dict(meta["dims"]))
    state = load_file(str(directory / WEIGHTS_FILE))
    own = model.state_dict()
    if set(state) != set(own):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(
            f"{directory}: checkpoint mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    # A float16 asset is cast back to the model's float32.
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.to(device).eval()


def export_asset(checkpoint: str | Path, asset: str | Path) -> Path:
    """A trained checkpoint as a shipped asset: the same files, weights in float16 (half
    the size; retrieval scores change in the fourth decimal)."""
    out = save_tower_cmpl(load_tower_cmpl(checkpoint), asset, dtype=torch.float16)
    (out / WEIGHTS_FILE).chmod(0o644)  # safetensors writes owner-only; an asset is shared
    return out
