"""The SQLite schema of a map and its version number.

A map records the version it was written with; `MapStore` adds this schema only to a new
file or one of the same version, so a map of another schema is never half-converted.
"""

from __future__ import annotations

SCHEMA_VERSION = 2
"""2: image paths relative to their data set root plus a ``sources`` table (1 stored them
absolute, which broke every map moved to another machine)."""

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id          INTEGER PRIMARY KEY,
    root        TEXT NOT NULL UNIQUE,
    kind        TEXT,
    first_built TEXT NOT NULL,
    last_built  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS places (
    place_id TEXT PRIMARY KEY,
    city     TEXT NOT NULL DEFAULT '',
    lat      REAL NOT NULL,
    lon      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id        INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    path      TEXT NOT NULL,
    sha256    TEXT NOT NULL UNIQUE,
    place_id  TEXT NOT NULL REFERENCES places(place_id),
    lat       REAL NOT NULL,
    lon       REAL NOT NULL,
    heading   REAL,
    date      TEXT,
    UNIQUE (source_id, path)
);
CREATE INDEX IF NOT EXISTS images_place ON images(place_id);
CREATE TABLE IF NOT EXISTS fine_features (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    data     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    id         INTEGER PRIMARY KEY,
    image_id   INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    annotator  TEXT NOT NULL,
    phrase     TEXT NOT NULL,
    confidence REAL NOT NULL,
    category   TEXT NOT NULL DEFAULT '',
    attribute  TEXT NOT NULL DEFAULT '',
    value      TEXT NOT NULL DEFAULT '',
    x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER
);
CREATE INDEX IF NOT EXISTS evidence_image ON evidence(annotator, image_id);
CREATE TABLE IF NOT EXISTS evidence_runs (
    image_id  INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    annotator TEXT NOT NULL,
    version   TEXT NOT NULL,
    time      TEXT NOT NULL,
    PRIMARY KEY (annotator, image_id)
);
CREATE TABLE IF NOT EXISTS skipped (
    id     INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    time   TEXT NOT NULL,
    UNIQUE (source, reason)
);
"""
"""``sources.root``: the data set root as an absolute POSIX path (symlinks resolved) where
it was at build time, or where `MapDatabase.relocate` last pointed it. ``images.path``:
POSIX, relative to that root, so a map and its data set can move together.
``fine_features.data``: one image's float16 fine features (shape in meta ``fine_shape``),
written in the same transaction as the image row, so SQLite alone keeps them consistent; only
maps built with a FineEncoder have rows there (added to schema 2 maps as an empty table).
``evidence``: what an annotator derived from one image (a phrase with a confidence, and where
the annotator knows them a structured slot and a box); ``evidence_runs``: which images each
annotator (at which model version) has done, with or without items, so annotation resumes
and re-runs only on new images or a new version. Both were added to schema 2 maps as empty
tables, like ``fine_features``."""
