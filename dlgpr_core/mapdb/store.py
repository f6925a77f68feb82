"""SQLite side of a map: everything about an image except its embedding.

Transactions are explicit (autocommit connection plus BEGIN/COMMIT) because the builder
commits rows only after the FAISS index holding their vectors is safely on disk; Python's
implicit transactions would commit at moments the builder does not choose.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dlgpr_core.data.records import SkippedItem

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS places (
    place_id TEXT PRIMARY KEY,
    city     TEXT NOT NULL DEFAULT '',
    lat      REAL NOT NULL,
    lon      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id       INTEGER PRIMARY KEY,
    path     TEXT NOT NULL UNIQUE,
    sha256   TEXT NOT NULL UNIQUE,
    place_id TEXT NOT NULL REFERENCES places(place_id),
    lat      REAL NOT NULL,
    lon      REAL NOT NULL,
    heading  REAL,
    date     TEXT
);
CREATE INDEX IF NOT EXISTS images_place ON images(place_id);
CREATE TABLE IF NOT EXISTS skipped (
    id     INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    time   TEXT NOT NULL,
    UNIQUE (source, reason)
);
"""


def utc_now() -> str:
    """ISO timestamps in UTC so maps copied between machines sort their history correctly."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ImageRow:
    """One stored image, as search results and re-encoding need it."""

    id: int
    path: str
    place_id: str
    lat: float
    lon: float
    heading: float | None
    date: str | None
    city: str


class MapStore:
    """Thin typed wrapper over the SQLite file; knows nothing about embeddings."""

    def __init__(self, path: Path) -> None:
        # check_same_thread=False: ROS executors call search from worker threads; the
        # lock below serialises access instead.
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    # -- transactions -------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def begin(self) -> None:
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

    # -- images and places ----------------------------------------------------------
    def path_exists(self, path: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM images WHERE path = ?", (path,)).fetchone()
        return row is not None

    def path_of_sha(self, sha256: str) -> str | None:
        row = self._conn.execute("SELECT path FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else str(row[0])

    def insert_image(
        self,
        *,
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
            "INSERT INTO images(path, sha256, place_id, lat, lon, heading, date) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, sha256, place_id, lat, lon, heading, date),
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
                "SELECT images.id, images.path, images.place_id, images.lat, images.lon, "
                "images.heading, images.date, places.city FROM images "
                f"JOIN places ON places.place_id = images.place_id WHERE images.id IN ({marks})"
            )
            for r in self._conn.execute(query, chunk):
                out[int(r[0])] = ImageRow(
                    int(r[0]), str(r[1]), str(r[2]), float(r[3]), float(r[4]), r[5], r[6], str(r[7])
                )
        return out

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
        if table not in {"images", "places", "skipped"}:
            raise ValueError(table)
        return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
