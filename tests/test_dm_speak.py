"""The dialogue manager speaks each question with espeak-ng without blocking the dialogue.

A stand-in `espeak-ng` on PATH records its arguments instead of playing sound (CI has no
audio device); everything else is the real node and the real subprocess call. A question's
text is data: it must never be read as an option (a text "-w/some/path" once made espeak-ng
overwrite that file with a WAV of what it read from the terminal's stdin).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from dlgpr_core.speech.speaker import QuestionSpeaker
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
    exe.write_text(f'#!/bin/sh\nsleep 0.3\nprintf "%s\\n" "$*" >> {log}\n')
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
        assert fake_espeak.read_text().strip() == "-v en-gb -- Is there a bakery beside the bank?"
    finally:
        node.destroy_node()


STANDIN = """\
import getopt, json, os, stat, sys
# espeak-ng's own options, parsed as its getopt_long does (GNU: options anywhere until "--")
SHORT = "a:b:d:f:g:hk:l:mp:qs:v:w:xXz"
LONG = ["stdin", "stdout", "compile=", "punct=", "voices=", "version", "ipa", "path="]
opts, args = getopt.gnu_getopt(sys.argv[1:], SHORT, LONG)
for opt, value in opts:
    if opt == "-w":  # what the real espeak-ng does with -w: write a WAV there
        open(value, "wb").write(b"RIFF....WAVE")
st, null = os.fstat(0), os.stat("/dev/null")
devnull = stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps({"options": opts, "text": args, "stdin_devnull": devnull}) + "\\n")
"""


@contextmanager
def terminal_stdin(text: str) -> Iterator[None]:
    """fd 0 holds `text` (as a terminal holds what a person types) while the block runs: a
    child that inherits stdin can read it."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    os.close(read)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest.fixture
def standin_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `espeak-ng` that parses its arguments like the real one and records the result."""
    log = tmp_path / "standin.jsonl"
    exe = tmp_path / "standin" / "espeak-ng"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n{STANDIN}")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


def test_question_text_is_never_parsed_as_an_option(
    standin_espeak: Path, tmp_path: Path, context: Context
) -> None:
    victim = tmp_path / "victim.wav"
    victim.write_text("precious")
    node = DialogueManagerNode(
        context=context,
        parameter_overrides=[Parameter("update", value="text"), Parameter("speak", value=True)],
    )
    try:
        texts = [f"-w{victim}", "--stdout", f"-w {victim} Is there a tree?"]
        with terminal_stdin("what a person typed\n"):
            for text in texts:
                node.speaker.say(text)
        assert node.speaker.wait(20)
        records = [json.loads(line) for line in standin_espeak.read_text().splitlines()]
        assert sorted(r["text"][0] for r in records) == sorted(texts)
        for r in records:
            assert r["options"] == [["-v", "en"]]  # the voice, nothing from the text
            assert len(r["text"]) == 1 and r["stdin_devnull"], r
        assert victim.read_text() == "precious"
    finally:
        node.destroy_node()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_real_espeak_writes_no_file_from_a_question(tmp_path: Path) -> None:
    """The real binary: before the fix it took "-w<path>" as its output option, read the
    terminal's stdin as the text and wrote that WAV."""
    victim = tmp_path / "written.wav"
    speaker = QuestionSpeaker(True, "en")
    try:
        with terminal_stdin("Is there a tree?\n"):
            speaker.say(f"-w{victim}")
        assert speaker.wait(30)
        assert not victim.exists()
    finally:
        speaker.close()


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
