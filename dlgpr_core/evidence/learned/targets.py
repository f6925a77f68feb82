"""Training targets of the evidence heads, from a data set's region boxes: the data module.

This is the only part of the learned evidence model that reads ground truth (training does;
the annotator never imports it). Targets live on the heads' output grid (stride
`grid.GRID_STRIDE`):

- category per cell: the element of the *smallest* region box covering the cell's centre
  (a mailbox in front of a bank is the mailbox; the bank's other cells stay the bank);
  background where no box covers it. Boxes are painted largest first, so smaller ones win.
  A box that covers no cell centre at all (a lamp post 4 px wide) still claims the one cell
  holding its own centre, or thin things would never be seen in training;
- attribute per cell: the value of that cell's element, for attributes in the slot
  vocabulary only (evidence is what is visible; a street's building count is not an
  attribute of any region); -1 (ignored by the loss) elsewhere;
- street attributes per image, and which categories have a region in the image (what the
  presence calibration and the validation score count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlgpr_core.data.annotations import (
    Element,
    PlaceAnnotation,
    ViewAnnotation,
    read_annotations,
    view_image_path,
)

from .grid import GRID_STRIDE, grid_cell_size, grid_shape
from .vocab import LabelVocab

IGNORE = -1


@dataclass
class ImageTargets:
    """The targets of one image; arrays are (rows, columns) of the output grid."""

    classes: np.ndarray
    """int64 class per cell (0 = background, category i = i + 1)."""
    elements: np.ndarray
    """int64 index into the place's elements per cell, -1 on background."""
    attributes: dict[str, np.ndarray]
    """attribute -> int64 value index per cell, -1 where not applicable."""
    street: dict[str, int]
    """street attribute -> value index, -1 when unknown."""
    present: np.ndarray
    """bool per category (no background): has a region in this image."""


def view_targets(
    view: ViewAnnotation,
    elements: Sequence[Element],
    vocab: LabelVocab,
    stride: int = GRID_STRIDE,
) -> ImageTargets:
    rows, cols = grid_shape(view.width, view.height, stride)
    sx, sy = grid_cell_size(view.width, view.height, rows, cols)
    cx = (np.arange(cols) + 0.5) * sx
    cy = (np.arange(rows) + 0.5) * sy
    index = {e.id: i for i, e in enumerate(elements)}
    classes = np.zeros((rows, cols), np.int64)
    owner = np.full((rows, cols), -1, np.int64)
    present = np.zeros(len(vocab.categories), bool)
    regions = [
        r for r in view.regions if elements[index[r.element_id]].category in vocab.categories
    ]
    # Largest first; the stable sort keeps file order among equal areas.
    order = sorted(regions, key=lambda r: -(r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]))
    for region in order:
        x0, y0, x1, y1 = region.bbox
        e = index[region.element_id]
        inside_x = (cx >= x0) & (cx < x1)
        inside_y = (cy >= y0) & (cy < y1)
        mask = inside_y[:, None] & inside_x[None, :]
        if not mask.any():
            r = min(int(((y0 + y1) / 2) // sy), rows - 1)
            c = min(int(((x0 + x1) / 2) // sx), cols - 1)
            mask[r, c] = True
        owner[mask] = e
        category = elements[e].category
        classes[mask] = vocab.class_of(category)
        present[vocab.class_of(category) - 1] = True
    attributes: dict[str, np.ndarray] = {}
    for attr in vocab.attributes:
        per_element = np.full(len(elements) + 1, IGNORE, np.int64)  # last slot: background
        for i, el in enumerate(elements):
            value = el.attributes.get(attr)
            allowed = vocab.category_values.get(el.category, {}).get(attr, ())
            if value is not None and value in allowed:
                per_element[i] = vocab.value_index(attr, value)
        attributes[attr] = per_element[owner]  # owner -1 picks the background slot
    street: dict[str, int] = {a: IGNORE for a in vocab.street}
    for el in elements:
        if el.kind == "street" or el.category == "street":
            for attr, vals in vocab.street.items():
                value = el.attributes.get(attr)
                if value in vals:
                    street[attr] = vals.index(value)
    return ImageTargets(classes, owner, attributes, street, present)


@dataclass
class CityTargets:
    """Targets of every image of a city, stacked (image order = annotation order)."""

    city: str
    paths: list[Path]
    place_ids: list[str]
    size: tuple[int, int]
    """(width, height) of every image."""
    classes: np.ndarray
    """(N, rows, cols) int64."""
    elements: np.ndarray
    """(N, rows, cols) int64."""
    attributes: dict[str, np.ndarray]
    """attribute -> (N, rows, cols) int64."""
    street: dict[str, np.ndarray]
    """street attribute -> (N,) int64."""
    present: np.ndarray
    """(N, categories) bool."""

    def __len__(self) -> int:
        return len(self.paths)


def city_targets(
    root: Path | str,
    city: str,
    vocab: LabelVocab,
    max_places: int | None = None,
    stride: int = GRID_STRIDE,
) -> CityTargets:
    """Targets for ``<root>/Annotations/<city>.jsonl``; every view must have one size."""
    root = Path(root)
    places: list[PlaceAnnotation] = read_annotations(root / "Annotations" / f"{city}.jsonl")
    places = places[:max_places]
    items: list[ImageTargets] = []
    paths: list[Path] = []
    place_ids: list[str] = []
    sizes: set[tuple[int, int]] = set()
    for p in places:
        for v in p.views:
            items.append(view_targets(v, p.elements, vocab, stride))
            paths.append(view_image_path(root, v))
            place_ids.append(f"{p.city}:{p.place_id}")
            sizes.add((v.width, v.height))
    if len(sizes) > 1:
        raise ValueError(f"{city}: views of several sizes {sorted(sizes)}; the cache needs one")
    if not items:
        raise ValueError(f"{city}: no views under {root}")
    return CityTargets(
        city=city,
        paths=paths,
        place_ids=place_ids,
        size=sizes.pop(),
        classes=np.stack([t.classes for t in items]),
        elements=np.stack([t.elements for t in items]),
        attributes={a: np.stack([t.attributes[a] for t in items]) for a in vocab.attributes},
        street={a: np.array([t.street[a] for t in items], np.int64) for a in vocab.street},
        present=np.stack([t.present for t in items]),
    )
