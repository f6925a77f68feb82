"""Crash-safe files and directories (`dlgpr_core.atomic`): every crash point of a replace
leaves a whole copy that `recover_dir` restores, and a torn copy is never promoted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlgpr_core.atomic import (
    COMPLETE,
    is_complete,
    recover_dir,
    replace_dir,
    staged,
    write_atomic,
)


def _version(target: Path, text: str) -> Path:
    tmp = staged(target)
    (tmp / "weights").write_text(text)
    return tmp


def _crash_renaming(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name == name:
            raise OSError(f"simulated crash renaming {name}")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_replace_swaps_in_the_new_version_whole(tmp_path: Path) -> None:
    target = tmp_path / "last"
    replace_dir(_version(target, "v1"), target)
    replace_dir(_version(target, "v2"), target)
    assert (target / "weights").read_text() == "v2" and is_complete(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert recover_dir(target) is None


@pytest.mark.parametrize(("crash_at", "survivor"), [("last.tmp", "v2"), ("last", "v1")])
def test_a_crash_at_either_rename_leaves_a_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str, survivor: str
) -> None:
    target = tmp_path / "last"
    replace_dir(_version(target, "v1"), target)
    with monkeypatch.context() as m:
        _crash_renaming(m, crash_at)
        with pytest.raises(OSError, match="simulated crash"):
            replace_dir(_version(target, "v2"), target)
    note = recover_dir(target)
    assert (target / "weights").read_text() == survivor
    assert (note is None) == (crash_at == "last")  # the first rename failed: nothing lost
    replace_dir(_version(target, "v3"), target)  # and the next save works as usual
    assert (target / "weights").read_text() == "v3"


def test_a_torn_staged_copy_is_never_promoted(tmp_path: Path) -> None:
    target = tmp_path / "best"
    tmp = target.with_name("best.tmp")
    tmp.mkdir()
    (tmp / "weights").write_text("half")  # no COMPLETE marker: the writer died
    assert recover_dir(target) is None and not target.exists()
    old = target.with_name("best.old")
    old.mkdir()
    (old / "weights").write_text("previous")
    assert "best.old" in (recover_dir(target) or "")
    assert (target / "weights").read_text() == "previous"
    assert not (target / COMPLETE).exists()  # older checkpoints carry no marker: still fine


def test_write_atomic_leaves_the_old_file_on_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache.json"
    write_atomic(path, "old")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("crash")))
        with pytest.raises(OSError, match="crash"):
            write_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]
    write_atomic(path, b"bytes")
    assert path.read_bytes() == b"bytes"
