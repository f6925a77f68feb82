"""Paths in a map's recorded encoder spec: written so that any working directory reads them.

A map records how to re-create its encoder (``encoder.name``, ``encoder.checkpoint``) so
later commands and robot nodes need no encoder flags. Paths in it used to be recorded as
typed, relative to the directory the build ran in, so a node started elsewhere failed with
"No such file or directory". Now a path is recorded resolved: relative to the map directory
when it lies inside it (so a map copied with its weights keeps working), else absolute.
Maps recorded before keep their relative path (no ``encoder.checkpoint_base``); those still
load from the directory they were built in, and elsewhere get a clear refusal.
"""

from __future__ import annotations

from pathlib import Path

from dlgpr_core.mapdb.errors import MapError

MAP_BASE = "map"
"""``encoder.checkpoint_base`` value: the checkpoint path is relative to the map directory."""

OPEN_CLIP_PREFIX = "open_clip:"


def record_checkpoint(checkpoint: str | Path, map_directory: Path) -> tuple[str, str | None]:
    """(path to record, base) for a checkpoint given relative to the current directory."""
    path = Path(checkpoint).expanduser().absolute()
    try:
        return path.relative_to(map_directory.absolute()).as_posix(), MAP_BASE
    except ValueError:
        return path.as_posix(), None


def record_name(name: str) -> str:
    """An encoder spec whose path argument (``cmpl:<dir>``, a JSON config) exists relative
    to the current directory, made absolute; every other spec is kept as given."""
    if name.startswith(OPEN_CLIP_PREFIX):
        return name  # model:tag, or a path the open_clip loader resolves itself
    kind, sep, argument = name.partition(":")
    target = argument if sep else name
    path = Path(target).expanduser()
    if not target or path.is_absolute() or not path.exists():
        return name
    resolved = path.absolute().as_posix()
    return f"{kind}:{resolved}" if sep else resolved


def resolve_checkpoint(recorded: str, base: str | None, map_directory: Path) -> str:
    """The checkpoint file a recorded spec means, from whatever directory this runs in.

    Raises `MapError` naming what was recorded and what to do when it is not found, instead
    of letting the encoder fail later with a bare "No such file or directory".
    """
    path = Path(recorded)
    if base == MAP_BASE:
        candidates = [map_directory / path]
        where = f"inside the map directory ({map_directory / path})"
    elif path.is_absolute():
        candidates = [path]
        where = f"at {path}"
    else:  # recorded by an older dlgpr, relative to the build's working directory
        candidates = [Path.cwd() / path, map_directory / path]
        where = (
            f"relative to the directory the map was built from (an older dlgpr recorded it "
            f"as typed); neither {candidates[0]} nor {candidates[1]} exists"
        )
    for candidate in candidates:
        if candidate.exists():
            return candidate.absolute().as_posix()
    raise MapError(
        f"map {map_directory} records its encoder checkpoint {recorded!r} {where}, and it is "
        "not there; pass the file with --checkpoint PATH (or put it back), or run from the "
        "directory the map was built in"
    )
