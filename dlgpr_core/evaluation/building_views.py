"""How well a place's views show each of its buildings: the part of evidence recall no
image-reading annotator can be blamed for.

A building's kind is mostly written only on its sign, so whether any image tells it depends
on how the views show the building. The oracle-evidence row of Table 1 counts a building as
seen whenever some view has a region of it, a 13-pixel sliver at the frame's edge or a
facade behind a tree included; the learned evidence can only read what the pixels show.
Splitting the recall of building kinds by the building's best view
(`evidence_quality.EvidenceQualityTable.buildings_by_view`) says how much of the gap
between the two rows is signs that no view shows legibly.

Classes, best first (a building gets the best one over its views):

- ``clear``: its whole width in the frame, at least `MIN_HEIGHT` of the image tall, and
  nothing wide in front of the middle of its facade, where the sign hangs;
- ``behind something``: the same, but in every such view a tree or a piece of street
  furniture at least `FRONT_WIDTH` of the building's width overlaps the middle `MIDDLE` of
  its facade;
- ``small``: in the frame but shorter than `MIN_HEIGHT` of the image in every view;
- ``cut by the frame``: only in views where it touches the left or right edge.

The thresholds are geometry, not tuned: they name the cases, and the table reports how
often each annotator finds the building in each.
"""

from __future__ import annotations

from collections.abc import Mapping

from dlgpr_core.data.annotations import Element, PlaceAnnotation, Region, ViewAnnotation

VIEW_CLASSES = ("clear", "behind something", "small", "cut by the frame")
MIN_HEIGHT = 0.2
"""A building's box at least this share of the image's height is large enough to read."""
EDGE = 1
"""Pixels from the left or right border within which a box counts as cut by the frame."""
MIDDLE = 0.4
"""The middle share of a facade's width that must be unobstructed (the sign is centred)."""
FRONT_WIDTH = 0.25
"""A box in front at least this share of the building's width hides its sign."""
OCCLUDERS = ("vegetation", "furniture")
"""Kinds of element drawn in front of the buildings."""


def _view_class(view: ViewAnnotation, box: Region, kinds: Mapping[str, str]) -> str:
    x0, y0, x1, y1 = box.bbox
    if x0 <= EDGE or x1 >= view.width - EDGE:
        return "cut by the frame"
    if y1 - y0 < MIN_HEIGHT * view.height:
        return "small"
    width = x1 - x0
    m0 = x0 + (1 - MIDDLE) / 2 * width
    m1 = x1 - (1 - MIDDLE) / 2 * width
    for r in view.regions:
        if kinds.get(r.element_id) not in OCCLUDERS:
            continue
        ox0, oy0, ox1, oy1 = r.bbox
        if ox0 < m1 and ox1 > m0 and oy0 < y1 and oy1 > y0 and ox1 - ox0 >= FRONT_WIDTH * width:
            return "behind something"
    return "clear"


def building_view_class(place: PlaceAnnotation, building: Element) -> str | None:
    """The best `VIEW_CLASSES` entry over the place's views for `building`; None when no
    view has a region of it."""
    kinds = {e.id: e.kind for e in place.elements}
    found = [
        _view_class(view, r, kinds)
        for view in place.views
        for r in view.regions
        if r.element_id == building.id
    ]
    return min(found, key=VIEW_CLASSES.index) if found else None
