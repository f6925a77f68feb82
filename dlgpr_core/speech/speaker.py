"""Speaking the robot's questions aloud with espeak-ng, without blocking the dialogue.

The dialogue goes on while a question is spoken (the person may answer before it ends), so
each utterance is a child process that is reaped later, never waited for.

The text comes from a questioner (a model, a map's evidence phrases), so it is data, never
options: it follows `--` (a question reading "-w/some/path" must not make espeak-ng write a
WAV over that file), and the child gets /dev/null as stdin (espeak-ng reads its text from
stdin when none is given; it must never read the robot's terminal). `synthesize.py` passes
its text the same way.
"""

from __future__ import annotations

import shutil
import subprocess
import time


class QuestionSpeaker:
    """Non-blocking espeak-ng; disabled (or without espeak-ng installed) it says nothing."""

    MISSING = (
        "speak is true but espeak-ng is not installed (apt install espeak-ng): "
        "questions are published, not spoken"
    )

    def __init__(self, enabled: bool, voice: str = "en") -> None:
        self.voice = voice
        self.exe = shutil.which("espeak-ng") if enabled else None
        self.missing = enabled and self.exe is None
        """Asked to speak but espeak-ng is not installed (the caller should say so)."""
        self._children: list[subprocess.Popen[bytes]] = []

    def command(self, text: str) -> list[str]:
        """The argument list speaking `text`: options first, then `--`, then the text."""
        return [self.exe or "espeak-ng", "-v", self.voice, "--", text]

    def say(self, text: str) -> None:
        self._children = [c for c in self._children if c.poll() is None]
        if self.exe:
            self._children.append(
                subprocess.Popen(
                    self.command(text),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def wait(self, timeout: float) -> bool:
        """Waits until nothing is being spoken (tests, an orderly stop); False on time-out."""
        deadline = time.monotonic() + timeout
        for c in self._children:
            try:
                c.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def close(self) -> None:
        """Stops whatever is still being spoken."""
        for c in self._children:
            c.kill()
            c.wait()
        self._children = []
