"""The heads' output grid: one cell per 16x16 pixels of the trunk's stride-16 map.

Shared by the targets (which cell an element owns) and the decoder (which pixels a cell
covers), so a box always means the same pixels in training and in the annotator.
"""

from __future__ import annotations

import math

GRID_STRIDE = 16


def grid_shape(width: int, height: int, stride: int = GRID_STRIDE) -> tuple[int, int]:
    """(rows, columns) of the output grid: the trunk's TF "same" padding rounds up."""
    return math.ceil(height / stride), math.ceil(width / stride)


def grid_cell_size(width: int, height: int, rows: int, cols: int) -> tuple[float, float]:
    """(x, y) pixels per cell: the grid spans the whole image, last cells included."""
    return width / cols, height / rows
