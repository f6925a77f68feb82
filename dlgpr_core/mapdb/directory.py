"""The on-disk map: a directory holding ``map.sqlite`` and ``embeddings.faiss``.

Everything that is true of the map as a whole lives here: which schema and encoder it
was built with, how many dimensions its embeddings have, who may write to it. Opening
checks the schema version before reading any other key, because another schema may lack
(or misname) them; a refused map is left untouched and its SQLite file closed.

The map directory may move: nothing in it names its own location (image paths are
relative to their data set root, see `dlgpr_core.mapdb.sources`).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlgpr_core.encoders.base import Encoder, FineEncoder
from dlgpr_core.mapdb.encoder_paths import (
    MAP_BASE,
    record_checkpoint,
    record_name,
    resolve_checkpoint,
)
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import EXACT_FILE, ExactIndex
from dlgpr_core.mapdb.schema import SCHEMA_VERSION
from dlgpr_core.mapdb.store import MapStore, utc_now, writable_bits

MAP_FILE = "map.sqlite"
LOCK_FILE = "map.lock"
BUILD_HINT = "dlgpr map build"
"""How messages tell the user to (re)build a map; keep in step with the CLI."""

FineShape = tuple[int, int, int]
"""(levels, queries, width) of one image's fine features."""


class MapDirectory:
    """An open map's files, metadata and locks; the layers above share one instance.

    ``lock`` serialises every access within the process (ROS executors search from
    worker threads); `writing` adds the cross-process writer lock.
    """

    def __init__(self, directory: Path, store: MapStore) -> None:
        self.directory = directory
        self.store = store
        self.lock = store.lock
        self.read_only = store.read_only
        """Opened without write access (a read-only mount): searches and reports work,
        every writing verb is refused by `require_writable`."""
        _check_schema(directory, store.stored_version)
        meta = store.all_meta()
        try:
            self.encoder_fingerprint = meta["encoder_fingerprint"]
            self.dim = int(meta["dim"])
            self.created = meta.get("created", "")
            self.fine_shape: FineShape | None = _parse_shape(meta.get("fine_shape"))
            int(meta["schema_version"])
        except (KeyError, ValueError) as exc:
            raise MapError(
                f"{directory / MAP_FILE} lacks map metadata ({exc}); it is not a map"
            ) from exc

    @classmethod
    def create(cls, directory: Path, encoder_fingerprint: str, dim: int) -> MapDirectory:
        """Create an empty map; refuses a directory that already holds one."""
        if (directory / MAP_FILE).exists():
            raise MapError(
                f"a map already exists at {directory}; open it, or choose another directory"
            )
        if dim <= 0 or not encoder_fingerprint:
            raise MapError("a map needs an encoder fingerprint and a positive embedding dimension")
        directory.mkdir(parents=True, exist_ok=True)
        store = MapStore(directory / MAP_FILE)
        store.begin()
        for key, value in {
            "schema_version": str(SCHEMA_VERSION),
            "encoder_fingerprint": encoder_fingerprint,
            "dim": str(dim),
            "created": utc_now(),
            "generation": "0",
        }.items():
            store.set_meta(key, value)
        ExactIndex(dim).save(directory / EXACT_FILE)
        store.commit()
        return cls(directory, store)

    @classmethod
    def open(cls, directory: Path, read_only: bool | None = None) -> MapDirectory:
        """Open an existing map; a refused map does not keep its SQLite file open.

        ``read_only``: None (the default) opens read-only exactly when the map cannot be
        written here (`is_read_only`: a read-only mount, or files or directory without
        write permission), so robots can mount maps read-only; True never writes even to
        a writable map; False refuses a map that cannot be written.
        """
        if not directory.is_dir():
            raise MapError(f"no map directory at {directory}; build one with `{BUILD_HINT}`")
        path = directory / MAP_FILE
        if not path.is_file():
            raise MapError(
                f"{directory} holds no map ({MAP_FILE} missing); build one with `{BUILD_HINT}`"
            )
        if not os.access(path, os.R_OK) or not os.access(directory, os.R_OK | os.X_OK):
            raise MapError(
                f"permission denied reading the map {directory}: this user ({os.getuid()}) "
                f"may not read {path}; give it read access (chmod/chown) or run as its owner"
            )
        cannot_write = is_read_only(directory)
        if read_only is False and cannot_write:
            raise MapError(
                f"map {directory} is read-only here ({cannot_write}); copy it to a writable "
                "directory or mount it read-write to change it"
            )
        try:
            store = MapStore(path, read_only=bool(read_only) or bool(cannot_write))
        except MapError as exc:
            raise MapError(
                f"cannot open the read-only map {directory}: {exc}; open it once where it "
                "is writable (e.g. `dlgpr map info`), which folds the log into the map, "
                "then mount it read-only again"
            ) from exc
        except sqlite3.OperationalError as exc:  # a permission or locking problem
            raise MapError(f"cannot open the map {directory}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # a file that is no SQLite database
            raise MapError(f"{path} is not a readable map: {exc}") from exc
        try:
            return cls(directory, store)
        except BaseException:
            store.close()
            raise

    def require_writable(self, action: str) -> None:
        """Refuse a writing verb on a map opened read-only, saying why and what to do."""
        if self.read_only:
            why = is_read_only(self.directory) or "it was opened read-only"
            raise MapError(
                f"cannot {action}: map {self.directory} is read-only ({why}); copy it to a "
                "writable directory or mount it read-write to change it"
            )

    def close(self) -> None:
        with self.lock:
            self.store.close()

    @contextmanager
    def writing(self, action: str = "write") -> Iterator[None]:
        """One writer per map across processes; a second build would fork the index file."""
        self.require_writable(action)
        handle = (self.directory / LOCK_FILE).open("a")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MapError(
                    f"another process is writing to the map {self.directory}; wait for it to finish"
                ) from None
            with self.lock:
                yield
        finally:
            handle.close()

    def generation(self) -> str:
        """Bumped by every checkpoint that changes the index; derived indexes record it."""
        return self.store.get_meta("generation") or "0"

    # -- the encoder the map was built with -----------------------------------------
    def set_encoder_spec(self, name: str, checkpoint: str | Path | None) -> None:
        """Remember how to re-create the encoder, so later commands need no encoder flags.

        Paths are recorded resolved against the current directory (relative to the map
        directory when they lie inside it), see `dlgpr_core.mapdb.encoder_paths`.
        """
        self.require_writable("record the encoder")
        with self.lock:
            self.store.begin()
            self.store.set_meta("encoder.name", record_name(name))
            self.store.delete_meta("encoder.checkpoint")
            self.store.delete_meta("encoder.checkpoint_base")
            if checkpoint:
                path, base = record_checkpoint(checkpoint, self.directory)
                self.store.set_meta("encoder.checkpoint", path)
                if base:
                    self.store.set_meta("encoder.checkpoint_base", base)
            self.store.commit()

    def encoder_spec(self) -> dict[str, str]:
        """``{"name": ..., "checkpoint": ...}`` as recorded (a checkpoint inside the map
        directory joined to it); keys absent where never recorded."""
        with self.lock:
            meta = self.store.all_meta()
        spec = {
            k.removeprefix("encoder."): v
            for k, v in meta.items()
            if k.startswith("encoder.") and k != "encoder.checkpoint_base"
        }
        if "checkpoint" in spec and meta.get("encoder.checkpoint_base") == MAP_BASE:
            spec["checkpoint"] = (self.directory / spec["checkpoint"]).as_posix()
        return spec

    def encoder_choice(
        self, name: str | None = None, checkpoint: str | Path | None = None
    ) -> tuple[str, str | None]:
        """(encoder spec, checkpoint) to query this map with: the named encoder, else the
        one recorded at creation; the recorded checkpoint goes only with the recorded
        encoder, so a map needs no --encoder flag and never lends its weights to another.
        A recorded checkpoint is found from any working directory, or refused clearly
        (`encoder_paths.resolve_checkpoint`)."""
        from dlgpr_core.encoders.factory import DEFAULT_NAME

        with self.lock:
            meta = self.store.all_meta()
        recorded_name = meta.get("encoder.name")
        chosen = name or recorded_name or DEFAULT_NAME
        if checkpoint:
            return chosen, str(checkpoint)
        recorded = meta.get("encoder.checkpoint")
        if chosen != recorded_name or not recorded:
            return chosen, None
        base = meta.get("encoder.checkpoint_base")
        return chosen, resolve_checkpoint(recorded, base, self.directory)

    def check_encoder(self, encoder: Encoder) -> None:
        """Embeddings of different encoders are not comparable: refuse, never mix."""
        if encoder.fingerprint != self.encoder_fingerprint:
            raise MapError(
                f"map {self.directory} was built with {self.encoder_fingerprint}, "
                f"query encoder is {encoder.fingerprint}; rebuild the map or pass the "
                "matching encoder"
            )
        if encoder.dim != self.dim:
            raise MapError(
                f"map {self.directory} stores {self.dim}-dim embeddings but the encoder "
                f"produces {encoder.dim}; rebuild the map or pass the matching encoder"
            )

    def use_fine(self, encoder: Encoder) -> None:
        """Record the fine-feature shape on the first build with a FineEncoder; refuse a
        build that would leave a fine map's new rows without features."""
        shape = tuple(encoder.fine_shape) if isinstance(encoder, FineEncoder) else None
        if shape == self.fine_shape:
            return
        if self.fine_shape is not None:
            raise MapError(
                f"map {self.directory} stores fine features of shape {self.fine_shape}, the "
                f"encoder gives {shape}; build it with the encoder it was created with"
            )
        assert shape is not None
        self.require_writable("record the fine-feature shape")
        self.store.begin()
        self.store.set_meta("fine_shape", ",".join(str(int(v)) for v in shape))
        self.store.commit()
        self.fine_shape = (int(shape[0]), int(shape[1]), int(shape[2]))


def is_read_only(directory: Path) -> str:
    """Why this process cannot write the map at ``directory`` ("" if it can).

    access() sees read-only mounts and missing permissions; the permission bits also
    count, so a map made read-only with ``chmod -R a-w`` is read-only even to root.
    """
    paths = [directory, *(directory / name for name in (MAP_FILE, EXACT_FILE))]
    for path in paths:
        if not path.exists():
            continue
        if not os.access(path, os.W_OK):
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                return f"{path} is on a read-only file system"
            return f"{path} is not writable by this user"
        if not writable_bits(path):
            return f"{path} has no write permission"
    return ""


def _check_schema(directory: Path, version: int | None) -> None:
    """Refuse a map of another schema with the way out (a new map: never half-convert)."""
    if version is not None and version < SCHEMA_VERSION:
        raise MapError(
            f"{directory} uses map schema {version}, this dlgpr reads schema "
            f"{SCHEMA_VERSION} (image paths relative to their data set root); rebuild "
            f"the map with `{BUILD_HINT}` into a new directory"
        )
    if version is not None and version > SCHEMA_VERSION:
        raise MapError(
            f"{directory} uses map schema {version}, newer than the schema "
            f"{SCHEMA_VERSION} this dlgpr reads; upgrade dlgpr or rebuild the map with "
            f"`{BUILD_HINT}` into a new directory"
        )


def _parse_shape(value: str | None) -> FineShape | None:
    """Meta ``fine_shape`` ("levels,queries,width") of a map built with a FineEncoder."""
    if not value:
        return None
    try:
        a, b, c = (int(v) for v in value.split(","))
    except ValueError as exc:
        raise MapError(f"unreadable fine_shape {value!r} in map metadata") from exc
    return a, b, c
