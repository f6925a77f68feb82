"""Crash-safe files and directories: a reader sees the old version or the new one, whole.

Trainers write checkpoints and caches that a later run trusts. Written in place, a crash
mid-write leaves a torn file that the next run either loads (garbage) or cannot load; a
directory swapped by two renames leaves, between them, no directory at all. The rules here:

- a file is written beside its target, flushed to disk, then renamed over it (`write_atomic`);
- a directory is built beside its target as ``<name>.tmp``, marked complete (a `COMPLETE`
  file written last), then swapped in by two renames through ``<name>.old``
  (`replace_dir`); a crash at any point leaves at least one complete copy among
  ``<name>``, ``<name>.tmp`` (marked) and ``<name>.old``, and `recover_dir` puts the newest
  back under ``<name>``, saying which it chose.

Imports nothing from the rest of `dlgpr_core`, so every layer may use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

COMPLETE = "COMPLETE"
"""Written last into a staged directory: its presence means every other file is whole."""


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` survive a power cut (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def write_atomic(path: Path | str, data: str | bytes) -> Path:
    """Write `data` to `path` so a crash leaves the old file or the new one, never a torn
    one: a temporary sibling, fsync, rename over, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with tmp.open("wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def staged(target: Path) -> Path:
    """The empty ``<target>.tmp`` directory to build a new version of `target` in."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def is_complete(directory: Path) -> bool:
    """A staged directory whose writer finished (its `COMPLETE` marker exists)."""
    return (directory / COMPLETE).is_file()


def replace_dir(staged_dir: Path, target: Path) -> Path:
    """Swap the finished `staged_dir` in as `target` (see the module docstring): flush its
    files, mark it complete, rename `target` to ``<target>.old``, rename `staged_dir` to
    `target`, drop ``<target>.old``."""
    for f in staged_dir.rglob("*"):
        if f.is_file():
            _fsync_file(f)
    with (staged_dir / COMPLETE).open("w", encoding="utf-8") as marker:
        marker.write("every other file of this directory is whole\n")
        marker.flush()
        os.fsync(marker.fileno())
    _fsync_dir(staged_dir)
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.replace(old)
    staged_dir.replace(target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)
    return target


def recover_dir(target: Path) -> str | None:
    """After a crash inside `replace_dir`, put the newest complete copy back as `target`:
    the marked ``.tmp`` (the new version, finished), else ``.old`` (the previous one).
    Returns what it did, for the caller to log; None when `target` exists or there is
    nothing to recover (an unmarked ``.tmp`` is a torn write and is never promoted)."""
    if target.exists():
        return None
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    lost = f"{target} was missing (a crash while it was replaced): restored"
    if tmp.is_dir() and is_complete(tmp):
        tmp.replace(target)
        _fsync_dir(target.parent)
        return f"{lost} {tmp.name}, the finished new copy"
    if old.is_dir():
        old.replace(target)
        _fsync_dir(target.parent)
        return f"{lost} {old.name}, the previous copy"
    return None
