"""Opening a map together with the encoder it needs: one rule for every caller.

The command line, the ROS retrieval node, the evaluation and the benchmarks all want the
same thing: a map and the encoder it was built with (unless one is named), loaded once per
process, and a new map recording how to re-create its encoder so later commands need no
flags.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dlgpr_core.encoders.base import Encoder
from dlgpr_core.encoders.factory import DEFAULT_NAME, create_encoder
from dlgpr_core.mapdb.database import MAP_FILE, MapDatabase

DEFAULT_MAP = Path("data/demo/map")
"""Where `dlgpr demo` builds its map (its default --workdir), so the demo needs no flags."""


@lru_cache(maxsize=4)
def load_encoder(name: str, checkpoint: str | None = None) -> Encoder:
    """Encoders are immutable after loading and take seconds to build: a re-configured node
    (cleanup then configure), a second graph in the same process or a second command of a
    test reuses them."""
    return create_encoder(name, checkpoint=checkpoint)


def map_encoder(
    db: MapDatabase, encoder: str | None = None, checkpoint: str | Path | None = None
) -> Encoder:
    """The named encoder, else the one the map recorded when it was built (as `dlgpr map
    query` does), checked against the map's fingerprint."""
    name, ckpt = db.encoder_choice(encoder or None, checkpoint)
    enc = load_encoder(name, ckpt)
    db.check_encoder(enc)
    return enc


def open_or_create_map(
    map_dir: Path, encoder: str | None = None, checkpoint: str | Path | None = None
) -> tuple[MapDatabase, Encoder]:
    """Extend an existing map with its own encoder, or create one recording the encoder
    spec, so later queries need no --encoder flag."""
    if (map_dir / MAP_FILE).exists():
        db = MapDatabase.open(map_dir)
        return db, map_encoder(db, encoder, checkpoint)
    name = encoder or DEFAULT_NAME
    enc = load_encoder(name, str(checkpoint) if checkpoint else None)
    db = MapDatabase.create(map_dir, enc.fingerprint, enc.dim)
    db.set_encoder_spec(name, str(checkpoint) if checkpoint else None)
    return db, enc
