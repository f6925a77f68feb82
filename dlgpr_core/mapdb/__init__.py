"""The street-view map: SQLite metadata plus FAISS embeddings in one directory.

faiss is imported only when an index is first touched, so importing this package is cheap.
"""

from dlgpr_core.mapdb.database import MAP_FILE, MapDatabase
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import APPROX_KINDS, ApproxReport
from dlgpr_core.mapdb.report import BuildReport, ImageHit, MapInfo, MapSource, PlaceHit

__all__ = [
    "APPROX_KINDS",
    "MAP_FILE",
    "ApproxReport",
    "BuildReport",
    "ImageHit",
    "MapDatabase",
    "MapError",
    "MapInfo",
    "MapSource",
    "PlaceHit",
]
