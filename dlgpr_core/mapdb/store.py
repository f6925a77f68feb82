"""SQLite side of a map: everything about an image except its embedding.

Transactions are explicit (autocommit connection plus BEGIN/COMMIT) because the builder
commits rows only after the FAISS index holding their vectors is safely on disk; Python's
implicit transactions would commit at moments the builder does not choose.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dlgpr_core.data.records import SkippedItem
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.schema import SCHEMA_SQL, SCHEMA_VERSION


def read_only_uri(path: Path) -> str:
    """An SQLite URI that reads ``path`` without writing to it or beside it.

    ``mode=ro`` alone still needs the WAL index file (``-shm``) beside the database, which
    a read-only directory cannot hold; there ``immutable=1`` reads the file as it stands,
    which is exact when no write-ahead log holds changes (a cleanly closed map has none).
    A log with changes but no index cannot be replayed read-only: refused by the caller
    (`MapDirectory.open`) with the way out.
    """
    uri = f"file:{quote(path.absolute().as_posix())}?mode=ro"
    if os.access(path.parent, os.W_OK) and writable_bits(path.parent):
        return uri  # SQLite may add its side files; the map's own files stay untouched
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        if path.with_name(path.name + "-shm").exists():
            return uri  # SQLite replays the log read-only through the existing index
        raise ReadOnlyMapError(f"{wal.name} holds changes that a read-only directory cannot replay")
    return uri + "&immutable=1"


def writable_bits(path: Path) -> bool:
    """Whether the permission bits let anyone write ``path``; a file or directory made
    read-only with ``chmod a-w`` reads as read-only even to root, whom access() lets
    write anything on a writable file system."""
    return bool(path.stat().st_mode & 0o222)


def utc_now() -> str:
    """ISO timestamps in UTC so maps copied between machines sort their history correctly."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ImageRow:
    """One stored image, as search results and re-encoding need it."""

    id: int
    path: str
    """Relative to ``root``, POSIX."""
    root: str
    """The root of the data set the image came from (``sources.root``)."""
    place_id: str
    lat: float
    lon: float
    heading: float | None
    date: str | None
    city: str


class ReadOnlyMapError(MapError):
    """A write to a map opened read-only, or a map that cannot be read without writing."""


class MapStore:
    """Thin typed wrapper over the SQLite file; knows nothing about embeddings.

    ``read_only`` opens the file without writing anything (robots mount maps read-only):
    no pragma that changes the file, no schema added, and SQLite's ``immutable`` mode
    where the directory cannot take SQLite's ``-wal``/``-shm`` side files (see
    `read_only_uri`). Any write then raises `ReadOnlyMapError` before touching SQLite.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        # check_same_thread=False: ROS executors call search from worker threads; the
        # lock below serialises access instead.
        self.path = path
        self.read_only = read_only
        if read_only:
            self._conn = sqlite3.connect(
                read_only_uri(path), uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        if not read_only:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # A map file may come from elsewhere: functions with side effects never run from
        # views or triggers its schema defines (this map's schema has none).
        self._conn.execute("PRAGMA trusted_schema=OFF")
        self.stored_version = self._stored_version()
        # A map of another schema is left untouched: adding this version's tables to it
        # would half-convert it. MapDirectory refuses it with a message saying to rebuild.
        if self.stored_version in (None, SCHEMA_VERSION):
            if read_only:
                self._shadow_missing_tables()
            else:
                self._conn.executescript(SCHEMA_SQL)

    def _shadow_missing_tables(self) -> None:
        """Empty TEMP tables for the tables a read-only schema-2 map predates (evidence,
        fine features were added to schema 2 later), so reads find them empty instead of
        failing; nothing reaches the file."""
        have = {
            str(r[0])
            for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        for statement in SCHEMA_SQL.split(";"):
            head = statement.strip()
            prefix = "CREATE TABLE IF NOT EXISTS "
            if not head.startswith(prefix):
                continue
            name = head[len(prefix) :].split()[0]
            if name not in have:
                self._conn.execute("CREATE TEMP TABLE " + head[len("CREATE TABLE ") :])

    def _refuse_write(self) -> None:
        if self.read_only:
            raise ReadOnlyMapError(
                f"{self.path} was opened read-only; open the map where it is writable to change it"
            )

    def _stored_version(self) -> int | None:
        """The map's ``schema_version`` meta value; None for a new (or non-map) file."""
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta is None:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return None if row is None else int(row[0])
        except ValueError:
            return -1  # unparsable: never equal to SCHEMA_VERSION, so refused

    # -- transactions -------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def begin(self) -> None:
        self._refuse_write()
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def savepoint(self, name: str) -> None:
        self._conn.execute(f"SAVEPOINT {name}")

    def release(self, name: str) -> None:
        self._conn.execute(f"RELEASE {name}")

    def rollback_to(self, name: str) -> None:
        self._conn.execute(f"ROLLBACK TO {name}")
        self._conn.execute(f"RELEASE {name}")

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement and its rows, for the tables other modules own (evidence)."""
        with self.lock:
            return list(self._conn.execute(sql, tuple(args)).fetchall())

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        with self.lock:
            self._conn.executemany(sql, rows)

    def close(self) -> None:
        self.rollback()
        self._conn.close()

    # -- meta ---------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_meta(self, key: str) -> None:
        self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def all_meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    # -- sources --------------------------------------------------------------------
    def source_id(self, root: str) -> int | None:
        row = self._conn.execute("SELECT id FROM sources WHERE root = ?", (root,)).fetchone()
        return None if row is None else int(row[0])

    def ensure_source(self, root: str, kind: str | None, now: str) -> int:
        """The id of the source at ``root``, created on its first stored image.

        Created lazily (not when a build starts) so a build that stores nothing, for
        example over a moved data set whose images are all duplicates, leaves no empty
        source behind that would block `MapDatabase.relocate` to that root.
        """
        self._conn.execute(
            "INSERT INTO sources(root, kind, first_built, last_built) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(root) DO UPDATE SET kind = coalesce(sources.kind, excluded.kind)",
            (root, kind, now, now),
        )
        found = self.source_id(root)
        assert found is not None
        return found

    def touch_source(self, source_id: int, kind: str | None, now: str) -> None:
        """Record that a build scanned this source again (and its kind, once known)."""
        self._conn.execute(
            "UPDATE sources SET last_built = ?, kind = coalesce(kind, ?) WHERE id = ?",
            (now, kind, source_id),
        )

    def sources(self) -> list[tuple[int, str, str | None, str, str, int]]:
        """(id, root, kind, first_built, last_built, number of images), oldest first."""
        rows = self._conn.execute(
            "SELECT sources.id, root, kind, first_built, last_built, count(images.id) "
            "FROM sources LEFT JOIN images ON images.source_id = sources.id "
            "GROUP BY sources.id ORDER BY sources.id"
        )
        return [
            (int(a), str(b), None if c is None else str(c), str(d), str(e), int(f))
            for a, b, c, d, e, f in rows
        ]

    def set_source_root(self, source_id: int, root: str) -> None:
        self._conn.execute("UPDATE sources SET root = ? WHERE id = ?", (root, source_id))

    def delete_source(self, source_id: int) -> None:
        self._conn.execute("DELETE FROM sources WHERE id = ?", (source_id,))

    def source_paths(self, source_id: int, limit: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT path FROM images WHERE source_id = ? ORDER BY id LIMIT ?", (source_id, limit)
        )
        return [str(r[0]) for r in rows]

    # -- images and places ----------------------------------------------------------
    def path_exists(self, source_id: int, path: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM images WHERE source_id = ? AND path = ?", (source_id, path)
        ).fetchone()
        return row is not None

    def path_of_sha(self, sha256: str) -> str | None:
        """Where the image with this content is stored: ``root/path`` as the map knows it."""
        row = self._conn.execute(
            "SELECT sources.root, images.path FROM images "
            "JOIN sources ON sources.id = images.source_id WHERE sha256 = ?",
            (sha256,),
        ).fetchone()
        return None if row is None else f"{str(row[0]).rstrip('/')}/{row[1]}"

    def insert_image(
        self,
        *,
        source_id: int,
        path: str,
        sha256: str,
        place_id: str,
        city: str,
        lat: float,
        lon: float,
        heading: float | None,
        date: str | None,
    ) -> int:
        """Insert an image (and its place on first sight); returns the row id = FAISS id."""
        self._conn.execute(
            "INSERT INTO places(place_id, city, lat, lon) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(place_id) DO NOTHING",
            (place_id, city, lat, lon),
        )
        cursor = self._conn.execute(
            "INSERT INTO images(source_id, path, sha256, place_id, lat, lon, heading, date) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (source_id, path, sha256, place_id, lat, lon, heading, date),
        )
        row_id = cursor.lastrowid
        assert row_id is not None
        return int(row_id)

    def recentre_places(self, place_ids: Iterable[str]) -> None:
        """A place sits at the mean of its images: GSV images of one place differ by metres."""
        self._conn.executemany(
            "UPDATE places SET "
            "lat = (SELECT avg(lat) FROM images WHERE images.place_id = places.place_id), "
            "lon = (SELECT avg(lon) FROM images WHERE images.place_id = places.place_id) "
            "WHERE place_id = ? AND EXISTS (SELECT 1 FROM images WHERE images.place_id = ?)",
            [(p, p) for p in place_ids],
        )

    def image_ids(self) -> list[int]:
        return [int(r[0]) for r in self._conn.execute("SELECT id FROM images ORDER BY id")]

    def rows_by_ids(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        out: dict[int, ImageRow] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            query = (
                "SELECT images.id, images.path, sources.root, images.place_id, images.lat, "
                "images.lon, images.heading, images.date, places.city FROM images "
                "JOIN places ON places.place_id = images.place_id "
                "JOIN sources ON sources.id = images.source_id "
                f"WHERE images.id IN ({marks})"
            )
            for r in self._conn.execute(query, chunk):
                out[int(r[0])] = ImageRow(
                    int(r[0]),
                    str(r[1]),
                    str(r[2]),
                    str(r[3]),
                    float(r[4]),
                    float(r[5]),
                    r[6],
                    r[7],
                    str(r[8]),
                )
        return out

    # -- fine features ------------------------------------------------------------
    def put_fine(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Insert or replace (a re-encoded image overwrites its old features)."""
        self._conn.executemany(
            "INSERT OR REPLACE INTO fine_features(image_id, data) VALUES (?, ?)", list(items)
        )

    def fine_by_ids(self, ids: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT image_id, data FROM fine_features WHERE image_id IN ({marks})"
            for r in self._conn.execute(query, chunk):
                out[int(r[0])] = bytes(r[1])
        return out

    def ids_without_fine(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM fine_features)"
        )
        return [int(r[0]) for r in rows]

    def fine_bytes(self) -> tuple[int, int]:
        """(total bytes of stored fine features, images that have them)."""
        row = self._conn.execute(
            "SELECT coalesce(sum(length(data)), 0), count(*) FROM fine_features"
        ).fetchone()
        return int(row[0]), int(row[1])

    def place_coords(self, place_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for start in range(0, len(place_ids), 500):
            chunk = list(place_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT place_id, lat, lon FROM places WHERE place_id IN ({marks})"
            for r in self._conn.execute(query, chunk):
                out[str(r[0])] = (float(r[1]), float(r[2]))
        return out

    # -- skipped ------------------------------------------------------------------
    def record_skipped(self, items: Iterable[SkippedItem]) -> None:
        """Upsert, so re-running a build over the same bad files does not grow the table."""
        now = utc_now()
        self._conn.executemany(
            "INSERT INTO skipped(source, reason, time) VALUES (?, ?, ?) "
            "ON CONFLICT(source, reason) DO UPDATE SET time = excluded.time",
            [(s.source, s.reason, now) for s in items],
        )

    def skipped(self) -> list[tuple[str, str, str]]:
        rows = self._conn.execute("SELECT source, reason, time FROM skipped ORDER BY id")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    # -- counts -------------------------------------------------------------------
    def count(self, table: str) -> int:
        if table not in {"images", "places", "skipped", "sources"}:
            raise ValueError(table)
        return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
