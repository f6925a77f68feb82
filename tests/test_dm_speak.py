"""The dialogue manager speaks each question with espeak-ng without blocking the dialogue.

A stand-in `espeak-ng` on PATH records its arguments instead of playing sound (CI has no
audio device); everything else is the real node and the real subprocess call.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from dlgpr_ros.dialogue_manager_node import DialogueManagerNode

pytestmark = pytest.mark.ros


@pytest.fixture
def context() -> Iterator[Context]:
    """A context of its own, whatever other test modules did with the default one."""
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture
def fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "spoken.txt"
    exe = tmp_path / "bin" / "espeak-ng"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nsleep 0.3\necho "$@" >> {log}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def test_questions_are_spoken_without_blocking(fake_espeak: Path, context: Context) -> None:
    node = DialogueManagerNode(
        context=context,
        parameter_overrides=[
            Parameter("update", value="text"),
            Parameter("speak", value=True),
            Parameter("voice", value="en-gb"),
        ],
    )
    try:
        t = time.monotonic()
        node.speaker.say("Is there a bakery beside the bank?")
        assert time.monotonic() - t < 0.25, "speaking must not block the executor"
        deadline = time.monotonic() + 10
        while not fake_espeak.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_espeak.read_text().strip() == "-v en-gb Is there a bakery beside the bank?"
    finally:
        node.destroy_node()


def test_no_speech_when_not_asked(fake_espeak: Path, context: Context) -> None:
    node = DialogueManagerNode(
        context=context, parameter_overrides=[Parameter("update", value="text")]
    )
    try:
        node.speaker.say("Is there a bakery?")
        time.sleep(0.6)
        assert not fake_espeak.exists()
    finally:
        node.destroy_node()


def test_a_manager_that_cannot_start_names_the_map_and_shuts_down_cleanly(
    tmp_path: Path, context: Context
) -> None:
    """The evidence update needs a map: a missing one is refused at start-up, naming it, and
    the context's shutdown (which destroys every node, this half-made one too) must not
    fail on top of that."""
    from dlgpr_core.mapdb.errors import MapError

    missing = tmp_path / "no-map"
    with pytest.raises(MapError, match="no-map"):
        DialogueManagerNode(
            context=context,
            parameter_overrides=[Parameter("map_path", value=str(missing))],
        )
    # the fixture's rclpy.shutdown destroys the half-made node: its teardown must pass
