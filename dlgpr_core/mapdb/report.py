"""Result types of the map: what a build did, what a search found, what a map holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dlgpr_core.data.records import SkippedItem


@dataclass
class BuildReport:
    """Everything the user needs after a build, including every refused input and why."""

    added: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    already_present: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    reencoded: int = 0
    """Stored rows whose embeddings were missing (after a crash) and were encoded again."""

    def render(self, max_items: int = 20) -> str:
        """Summary line, skip reasons by count, then the first ``max_items`` skipped inputs."""
        lines = [
            f"added {self.added} images, {self.already_present} already present, "
            f"{len(self.skipped)} skipped"
            + (f", {self.reencoded} re-encoded" if self.reencoded else "")
            + f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        ]
        if self.skipped:
            counts = Counter(_reason_kind(s.reason) for s in self.skipped)
            lines.append("skip reasons: " + "; ".join(f"{r} x{n}" for r, n in counts.most_common()))
            lines.extend(f"  {s.source}: {s.reason}" for s in self.skipped[:max_items])
            if len(self.skipped) > max_items:
                lines.append(f"  ... and {len(self.skipped) - max_items} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _reason_kind(reason: str) -> str:
    """Group 'corrupt image: <PIL detail>' style reasons by their stable prefix."""
    return reason.split(":", 1)[0]


@dataclass(frozen=True)
class ImageHit:
    """One ranked image."""

    rank: int
    """1-based."""
    score: float
    """Inner product of L2-normalised embeddings (cosine similarity)."""
    image_id: int
    path: str
    place_id: str
    lat: float
    lon: float
    heading: float | None
    date: str | None
    city: str


@dataclass(frozen=True)
class PlaceHit:
    """One ranked place, scored by its best-matching image."""

    rank: int
    """1-based."""
    score: float
    place_id: str
    lat: float
    """Place position: the mean of its images' positions."""
    lon: float
    image_path: str
    """The place's best-matching image."""
    image_id: int
    city: str


@dataclass
class MapInfo:
    """What a map holds and what it costs, for `dlgpr map info`."""

    directory: str
    encoder_fingerprint: str
    dim: int
    created: str
    schema_version: int
    n_places: int
    n_images: int
    n_indexed: int
    n_pending: int
    """Stored images without an embedding (interrupted build); the next build encodes them."""
    n_skipped: int
    index_types: list[str] = field(default_factory=list)
    bytes_per_embedding: dict[str, float] = field(default_factory=dict)
    """Index kind -> file bytes / indexed images (vectors, ids and structure overhead)."""

    def render(self) -> str:
        lines = [
            f"map:        {self.directory}",
            f"encoder:    {self.encoder_fingerprint} (dim {self.dim})",
            f"created:    {self.created}",
            f"places:     {self.n_places}",
            f"images:     {self.n_images} ({self.n_indexed} indexed"
            + (f", {self.n_pending} awaiting re-encoding" if self.n_pending else "")
            + ")",
            f"skipped:    {self.n_skipped}",
            f"indexes:    {', '.join(self.index_types) or 'none'}",
        ]
        sizes = self.bytes_per_embedding.items()
        lines.extend(f"  {kind}: {size:.0f} bytes per image" for kind, size in sizes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()
