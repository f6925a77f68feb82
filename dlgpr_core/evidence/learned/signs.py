"""The sign reader: a small CNN that reads building names from a full-resolution strip.

The heads see the image on a 16-pixel grid; a sign's letters are 6-11 pixels tall, so the
heads tell a sign's colour and width but read its words poorly, and the building type,
which mostly only the sign tells, is the weakest part of presence. The reader looks at the
pixels: a horizontal strip of the image at full resolution, centred on the row where the
heads' name attention peaks (signs hang at one height, so one strip per image holds them
all; the peak row is within 7 px of the true sign centre for 80% of the validation
buildings). It gives name logits and an attention score every 8 pixels along the strip; a
building's name pools the positions over that building's columns, weighted by the heads'
probability that the column is that category (training pools over the element's own
columns). No sign box is needed anywhere.

Cropping around the attention peak instead (a 24x160 window per building) was tried
first: the window was centred on the right sign for only 63% of validation buildings and
the reader reached 68% within-category accuracy, while the same reader on windows centred
on the true sign (generator geometry, an analysis only) reached 88% after 5 epochs: the
window, not the reading, was the limit. The strip lets the heads' category map choose the
columns instead of one peak cell.

The reader predicts over every chain name of every building category: the names are
distinct per category, so a confident reading also says which kind of building it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ReaderConfig

POSITION_STRIDE = 8
"""Pixels between the reader's outputs along the strip (three stride-2 convolutions)."""


class SignReader(nn.Module):
    """Strips (N, 3, strip_height, W), normalised like the trunk's input -> (name logits
    (N, names, P), attention (N, P)) at P = ceil(W / 8) positions along the strip."""

    def __init__(self, n_names: int, config: ReaderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(config.channels):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        if len(config.channels) != 4:
            raise ValueError("the sign reader has four conv stages (stride 8 along the strip)")
        self.body = nn.Sequential(*layers)
        # Along the strip: neighbouring letters make a word (receptive field about 100 px).
        self.along = nn.Sequential(
            nn.Conv1d(c_in, c_in, 5, padding=2, bias=False),
            nn.BatchNorm1d(c_in),
            nn.ReLU(True),
            nn.Conv1d(c_in, c_in, 5, padding=2, bias=False),
            nn.BatchNorm1d(c_in),
            nn.ReLU(True),
        )
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Conv1d(c_in, n_names + 1, 1)

    def forward(self, strips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(strips).amax(dim=2)  # (N, C, P): the sign row wherever it sits
        x = self.out(self.drop(self.along(x)))
        return x[:, :-1], x[:, -1]


def strip_rows(
    attention: torch.Tensor, log_p: torch.Tensor, which: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """attention (B, H, W), log_p (B, K, H, W), which (B, K) bool -> (the grid row of each
    image's strip (B,), has a strip (B,) bool): the median over the categories in `which` of
    the row where that category's name attention + log P peaks."""
    b, k, h, w = log_p.shape
    flat = (attention.unsqueeze(1) + log_p).reshape(b, k, h * w).argmax(-1)
    rows = (flat // w).float()
    rows = torch.where(which, rows, torch.nan)
    has = which.any(1)
    med = torch.nan_to_num(rows.nanmedian(dim=1).values, nan=0.0)
    return med.round().long(), has


def cut_strips(images: torch.Tensor, centres: torch.Tensor, height: int) -> torch.Tensor:
    """Rows [c - height/2, c + height/2) of each image for centres (B,) in pixels; outside
    the image is 0 (mid-grey after normalisation)."""
    padded = F.pad(images, (0, 0, height, height))
    out = [
        padded[i, :, c + height - height // 2 : c + height - height // 2 + height]
        for i, c in enumerate(centres.tolist())
    ]
    return (
        torch.stack(out)
        if out
        else images.new_zeros((0, images.shape[1], height, images.shape[-1]))
    )


def position_log_weights(cell_log_weights: torch.Tensor, positions: int) -> torch.Tensor:
    """(..., columns) log-weights per grid column -> (..., positions) per reader position
    (two positions per 16-pixel cell)."""
    per = cell_log_weights.repeat_interleave(16 // POSITION_STRIDE, dim=-1)
    if per.shape[-1] < positions:
        per = F.pad(per, (0, positions - per.shape[-1]), value=float(per.min()))
    return per[..., :positions]


def pool_positions(
    logits: torch.Tensor, attention: torch.Tensor, strip: torch.Tensor, log_w: torch.Tensor
) -> torch.Tensor:
    """Name logits of groups of positions: logits (N, V, P), attention (N, P) of N strips;
    strip (G,) which strip each group reads; log_w (G, P) its positions' log-weights ->
    (G, V) = sum over positions of softmax(attention + log_w) * logits."""
    a = torch.softmax(attention[strip] + log_w, dim=-1)
    return torch.einsum("gp,gvp->gv", a, logits[strip])
