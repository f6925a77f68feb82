"""What every `dlgpr` command shares: consoles, option types, encoder and map helpers.

Heavy libraries (torch, faiss, open_clip) are imported inside the helpers so that
`dlgpr --help` answers instantly on a robot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from dlgpr_core.encoders.base import Encoder
    from dlgpr_core.mapdb.database import MapDatabase

# No emoji codes: place ids like "Demoville:100:" must print as written.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

MapOption = Annotated[Path, typer.Option("--map", "-m", help="Map database directory.")]
EncoderOption = Annotated[
    str | None,
    typer.Option(
        help="Encoder: 'dlgpr-lite' (embedded default), 'open_clip:<model>:<tag or path>', "
        "'cmpl:<checkpoint dir>' or a JSON model config. Queries default to the encoder the "
        "map was built with."
    ),
]
CheckpointOption = Annotated[
    Path | None, typer.Option(help="Trained parameters (safetensors) for the encoder.")
]


def split(values: list[str]) -> list[str]:
    """Accept both ``--x a,b`` and ``--x a --x b``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def load_encoder(name: str, checkpoint: Path | None = None) -> Encoder:
    """An encoder by spec, with a status line while it loads (seconds)."""
    from dlgpr_core.mapdb.access import load_encoder as cached

    with console.status(f"loading encoder {name} ..."):
        return cached(name, str(checkpoint) if checkpoint else None)


def open_map(map_dir: Path) -> MapDatabase:
    from dlgpr_core.mapdb.database import MapDatabase

    return MapDatabase.open(map_dir)


def map_and_encoder(
    map_dir: Path, encoder: str | None, checkpoint: Path | None, create: bool = False
) -> tuple[MapDatabase, Encoder]:
    """The map and the encoder to use with it (the named one, else the map's own); with
    `create`, a missing map is created recording the encoder."""
    from dlgpr_core.mapdb.access import map_encoder, open_or_create_map

    with console.status(f"loading encoder {encoder or 'of the map'} ..."):
        if create:
            return open_or_create_map(map_dir, encoder, checkpoint)
        db = open_map(map_dir)
        return db, map_encoder(db, encoder, checkpoint)
