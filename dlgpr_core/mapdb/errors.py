"""The one exception type the map raises for anything a user can fix."""

from __future__ import annotations


class MapError(RuntimeError):
    """A refusal with a message saying what is wrong and what to do; the CLI prints it as-is."""
