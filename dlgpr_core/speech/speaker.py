"""Speaking the robot's questions aloud with espeak-ng, without blocking the dialogue.

The dialogue goes on while a question is spoken (the person may answer before it ends), so
each utterance is a child process that is reaped later, never waited for.
"""

from __future__ import annotations

import shutil
import subprocess


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

    def say(self, text: str) -> None:
        self._children = [c for c in self._children if c.poll() is None]
        if self.exe:
            self._children.append(
                subprocess.Popen(
                    [self.exe, "-v", self.voice, text],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def close(self) -> None:
        """Stops whatever is still being spoken."""
        for c in self._children:
            c.kill()
            c.wait()
        self._children = []
