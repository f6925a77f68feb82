"""Keeping data set paths inside their data set.

Data set files come from the internet (CSV rows, file names built from CSV columns), so a
row must not be able to make the builder read ``/etc/passwd`` or a file beside the data set:
every path a reader or the builder opens goes through `resolve_inside` first.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

ESCAPES_ROOT = "path escapes dataset root"
"""The skip reason every reader and the builder use, so reports group these together."""


def resolve_inside(root: Path, rel: str | Path) -> Path | None:
    """Return the real path of ``root/rel``, or None when it would leave ``root``.

    Absolute paths (POSIX or Windows style) are refused outright rather than re-rooted,
    because a data set that names absolute paths is not self-contained and silently
    re-rooting would read a different file than the author meant. ``..`` and symlinks are
    followed and judged by where they end up, so a symlink farm inside the root still works.
    """
    text = str(rel)
    if not text or "\x00" in text:
        return None
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute():
        return None
    if PureWindowsPath(text).drive:
        return None
    try:
        real_root = root.resolve()
        candidate = (real_root / text).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if candidate == real_root or not candidate.is_relative_to(real_root):
        return None
    return candidate


def relative_posix(root: Path, path: Path) -> str:
    """The POSIX form records store, so maps built on one OS read the same on another."""
    return path.relative_to(root.resolve()).as_posix()
