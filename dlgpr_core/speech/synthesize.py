"""Offline text-to-speech through Debian's flite or espeak-ng, for test fixtures and demos.

flite's default voice is what Whisper tiny.en understands nearly word for word here; espeak-ng
comes back badly garbled, which makes it useful for testing robustness, not correctness.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ENGINES = ("flite", "espeak-ng")


def synthesize(text: str, out_wav: Path, engine: str = "flite", voice: str | None = None) -> Path:
    """Speak ``text`` into ``out_wav`` (flite: 8 kHz, espeak-ng: 22.05 kHz, mono 16-bit)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown TTS engine {engine!r}; use one of {ENGINES}")
    exe = shutil.which(engine)
    if exe is None:
        raise FileNotFoundError(
            f"{engine} is not installed (Debian: apt install {engine}); cannot synthesise speech"
        )
    out = Path(out_wav)
    out.parent.mkdir(parents=True, exist_ok=True)
    if engine == "flite":
        cmd = [exe, "-t", text, "-o", str(out)]
        if voice:
            cmd += ["-voice", voice]
    else:
        cmd = [exe, "-w", str(out)]
        if voice:
            cmd += ["-v", voice]
        cmd += ["--", text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 or not out.exists() or out.stat().st_size <= 44:
        raise RuntimeError(f"{engine} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return out
