"""The data sets a map was built from, and re-pointing one that moved.

Image paths are stored relative to the root of the data set they came from (one
``sources`` row per root), because maps are built on one machine and used on others:
search results carry the relative path plus that root, and `relocate` re-points a data
set that moved.
"""

from __future__ import annotations

from pathlib import Path

from dlgpr_core.mapdb.directory import MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.report import MapSource


def list_sources(map_dir: MapDirectory) -> list[MapSource]:
    """The data sets this map was built from, oldest first."""
    with map_dir.lock:
        return [MapSource(*row) for row in map_dir.store.sources()]


def relocate(map_dir: MapDirectory, old_root: Path | str, new_root: Path | str) -> int:
    """Re-point the images of the data set built from ``old_root`` at ``new_root``.

    The one mechanism for a data set that moved (another machine, another folder):
    it rewrites that source's root in the map, so later builds from ``new_root``
    recognise its images as already present and re-encoding after a crash reads them
    there. Searching needs no relocation: results carry relative paths, and
    ``hit.resolve(root)`` joins them with wherever this machine keeps the data set.

    ``old_root`` is matched as recorded (see `list_sources`); ``new_root`` must be a
    directory holding the source's images (a sample is checked, to catch a wrong
    folder) and must not be another source's root. Returns the number of images
    re-pointed.
    """
    new = Path(new_root)
    if not new.is_dir():
        raise MapError(f"cannot relocate to {new}: not a directory")
    new_key = new.resolve().as_posix()
    with map_dir.writing("relocate a data set"):
        known = {src.root: src for src in list_sources(map_dir)}
        old = next((known[c] for c in _root_spellings(old_root) if c in known), None)
        if old is None:
            raise MapError(
                f"map {map_dir.directory} has no data set at {old_root}; its data set roots "
                f"are: {', '.join(known) or 'none'}"
            )
        if new_key == old.root:
            return old.n_images
        clash = known.get(new_key)
        if clash is not None and clash.n_images:
            raise MapError(
                f"{new_key} is already the root of another data set of map "
                f"{map_dir.directory} ({clash.n_images} images); relocate that one first "
                "or choose another folder"
            )
        store = map_dir.store
        sample = store.source_paths(old.id, 16)
        if sample and not any((Path(new_key) / rel).is_file() for rel in sample):
            raise MapError(
                f"none of {len(sample)} sampled images of {old.root} (e.g. {sample[0]}) is "
                f"under {new_key}; pass the folder the data set was moved to"
            )
        store.begin()
        if clash is not None:
            store.delete_source(clash.id)
        store.set_source_root(old.id, new_key)
        store.commit()
        return old.n_images


def _root_spellings(root: Path | str) -> list[str]:
    """How a root given by the user may appear in ``sources.root``: it may no longer exist
    (so resolving can stop short of symlinks it once went through) or be given relative."""
    path = Path(root)
    return list(
        dict.fromkeys([path.as_posix(), path.absolute().as_posix(), path.resolve().as_posix()])
    )
