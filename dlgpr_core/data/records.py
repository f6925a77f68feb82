"""What a street-view data set reader yields, whatever the on-disk layout.

Readers (GSV-Cities, generic CSV, SynthCities) never raise on a bad row or file:
they yield the good records and a `SkippedItem` naming each bad one and why, so a
build can go on and report everything at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ImageRecord:
    """One geo-tagged image of one place."""

    path: str
    """Path relative to the data set root, POSIX separators."""
    place_id: str
    """Globally unique place id, namespaced by city (``"Boston:42"``); see `namespaced_place_id`."""
    lat: float
    lon: float
    city: str = ""
    heading: float | None = None
    date: str | None = None
    """ISO ``YYYY-MM`` or ``YYYY-MM-DD`` where known."""


@dataclass(frozen=True)
class SkippedItem:
    """An input the reader or the builder refused, kept for the build report."""

    source: str
    """A path, or ``"file.csv:12"`` for a CSV row (1-based line number)."""
    reason: str


@dataclass
class DatasetScan:
    """Everything a reader found under one data set root."""

    root: Path
    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


def namespaced_place_id(city: str, place_id: int | str) -> str:
    """Place ids collide across cities (GSV-Cities numbers each city from 0), so every
    place id the project stores is prefixed with its city."""
    return f"{city}:{place_id}"
