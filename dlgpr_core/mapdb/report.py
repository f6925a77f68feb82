"""Result types of the map: what a build did, what a search found, what a map holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    search_index: str = ""
    """The index searches use after this build and why (see `dlgpr_core.mapdb.choice`)."""

    def render(self, max_items: int = 20) -> str:
        """Summary line, skip reasons by count, then the first ``max_items`` skipped inputs."""
        lines = [
            f"added {self.added} images, {self.already_present} already present, "
            f"{len(self.skipped)} skipped"
            + (f", {self.reencoded} re-encoded" if self.reencoded else "")
            + f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        ]
        if self.search_index:
            lines.append(self.search_index)
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
    """Relative to ``image_root``, POSIX: what the ROS messages carry, valid on any machine."""
    place_id: str
    lat: float
    lon: float
    heading: float | None
    date: str | None
    city: str
    image_root: str
    """Root of the data set the image came from, as the map records it (the build machine's
    path unless the map was re-pointed with `MapDatabase.relocate`)."""

    def resolve(self, root_override: Path | None = None) -> Path:
        """The image file: ``root_override`` (where this machine keeps the data set) or the
        recorded root, joined with the relative path."""
        return _join(self.image_root if root_override is None else root_override, self.path)


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
    """The place's best-matching image, relative to ``image_root``, POSIX."""
    image_id: int
    city: str
    image_root: str
    """Root of the data set that image came from; see `ImageHit.image_root`."""

    def resolve(self, root_override: Path | None = None) -> Path:
        """The best-matching image file; see `ImageHit.resolve`."""
        return _join(self.image_root if root_override is None else root_override, self.image_path)


def _join(root: Path | str, rel: str) -> Path:
    return Path(root) / rel


@dataclass(frozen=True)
class MapSource:
    """One data set a map was built from; its images' paths are relative to ``root``."""

    id: int
    root: str
    """Absolute POSIX path of the data set root at build time (or as last relocated)."""
    kind: str | None
    """Data set format (``"gsv"``, ``"csv"``...) where the build was told it."""
    first_built: str
    last_built: str
    """UTC ISO times of the first build that stored an image from it and the latest build
    that scanned it."""
    n_images: int


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
    sources: list[MapSource] = field(default_factory=list)
    fine_bytes_per_image: float | None = None
    """Stored fine (re-ranking) features per image, for maps built with a FineEncoder."""
    evidence: list[str] = field(default_factory=list)
    """One rendered block per annotator whose evidence the map holds."""
    search_index: str = ""
    """The index searches use by default and why (see `dlgpr_core.mapdb.choice`)."""
    read_only: bool = False
    """Opened read-only (a read-only mount or files without write permission)."""
    lexical: str = ""
    """How text searches use the evidence's words (see `mapdb.lexical`), or that they don't."""
    coverage: str = ""
    """The coverage rates the answer model reads the evidence with (`describe_unseen_rates`)."""

    def render(self) -> str:
        lines = [
            f"map:        {self.directory}" + (" (read-only)" if self.read_only else ""),
            f"encoder:    {self.encoder_fingerprint} (dim {self.dim})",
            f"created:    {self.created}",
            f"places:     {self.n_places}",
            f"images:     {self.n_images} ({self.n_indexed} indexed"
            + (f", {self.n_pending} awaiting re-encoding" if self.n_pending else "")
            + ")",
            f"skipped:    {self.n_skipped}",
            f"indexes:    {', '.join(self.index_types) or 'none'}",
        ]
        if self.search_index:
            lines.append(self.search_index)
        if self.lexical:
            lines.append(f"lexical:    {self.lexical}")
        if self.coverage:
            lines.append(f"coverage:   {self.coverage}")
        sizes = self.bytes_per_embedding.items()
        lines.extend(f"  {kind}: {size:.0f} bytes per image" for kind, size in sizes)
        for src in self.sources:
            kind = f" [{src.kind}]" if src.kind else ""
            lines.append(f"source:     {src.root}{kind}: {src.n_images} images")
        lines.extend(self.evidence or ["evidence:   none (run `dlgpr map evidence`)"])
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def describe_unseen_rates(rates: Mapping[str, float] | None) -> str:
    """One line for `dlgpr map info`: which coverage rates the answer model uses."""
    if rates is None:
        return (
            "the shipped unseen rates (SynthCities, 4 views per place; "
            "`dlgpr map coverage` records a map's own)"
        )
    if not rates:
        return "the views show everything at a place (no unseen rates)"
    listed = ", ".join(f"{c} {r:.3f}" for c, r in sorted(rates.items()))
    return f"the map's own unseen rates: {listed}"
