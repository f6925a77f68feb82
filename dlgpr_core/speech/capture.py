"""Microphone capture with sounddevice (PortAudio).

PortAudio calls the callback on a real-time audio thread: anything slow there (a lock held by
the transcriber, a Python allocation storm, a blocking put) makes the driver drop input. So
the callback only copies the block into a bounded queue and, when the consumer has fallen
behind, drops the block and counts it rather than waiting.
"""

from __future__ import annotations

import queue
import threading
from types import ModuleType, TracebackType
from typing import Any

import numpy as np


class AudioDeviceError(RuntimeError):
    """PortAudio or the requested input device is not available."""


def _sounddevice() -> ModuleType:
    """Import sounddevice on first use: importing it loads PortAudio, which a headless test
    machine or a robot without a microphone may not have."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioDeviceError(
            f"PortAudio library not found ({exc}); install libportaudio2 "
            "(apt install libportaudio2) to capture from a microphone"
        ) from exc
    except ImportError as exc:
        raise AudioDeviceError("sounddevice is not installed (pip install sounddevice)") from exc
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """Input-capable devices as ``{"index", "name", "max_input_channels",
    "default_samplerate"}``, for picking ``device`` in a launch file."""
    sd = _sounddevice()
    out: list[dict[str, Any]] = []
    for i, dev in enumerate(sd.query_devices()):
        if int(dev.get("max_input_channels", 0)) > 0:
            out.append(
                {
                    "index": i,
                    "name": str(dev.get("name", "")),
                    "max_input_channels": int(dev["max_input_channels"]),
                    "default_samplerate": float(dev.get("default_samplerate", 0.0)),
                }
            )
    return out


class MicrophoneSource:
    """Blocks of ``(frames, channels)`` float32 audio from an input device.

    ``queue_blocks`` bounds the backlog (default 50 blocks = 5 s at 100 ms): latency beyond
    that is worse than losing audio for a robot waiting on an answer.
    """

    def __init__(
        self,
        device: int | str | None,
        sample_rate: int,
        channels: int,
        block_ms: int = 100,
        queue_blocks: int = 50,
        dtype: str = "float32",
    ) -> None:
        if sample_rate <= 0 or channels <= 0 or block_ms <= 0 or queue_blocks <= 0:
            raise ValueError("sample_rate, channels, block_ms and queue_blocks must be positive")
        self.device = device
        self.sample_rate = sample_rate
        self.channels = channels
        self.block_ms = block_ms
        self.blocksize = max(int(sample_rate * block_ms / 1000), 1)
        self.dtype = dtype
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=queue_blocks)
        self._stream: Any = None
        self._lock = threading.Lock()
        self.dropped_blocks = 0
        """Blocks thrown away because the consumer did not keep up."""
        self.overflows = 0
        """Blocks PortAudio flagged as input overflow (lost inside the driver)."""

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """Runs on the audio thread: copy, never block, never raise."""
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self.dropped_blocks += 1

    def start(self) -> None:
        """Open and start the input stream (idempotent)."""
        with self._lock:
            if self._stream is not None:
                return
            sd = _sounddevice()
            try:
                stream = sd.InputStream(
                    device=self.device,
                    samplerate=self.sample_rate,
                    channels=self.channels,
                    blocksize=self.blocksize,
                    dtype=self.dtype,
                    callback=self._callback,
                )
                stream.start()
            except Exception as exc:  # PortAudioError or ValueError for a bad device
                raise AudioDeviceError(
                    f"cannot open input device {self.device!r} at {self.sample_rate} Hz, "
                    f"{self.channels} channel(s): {exc}; see list_devices()"
                ) from exc
            self._stream = stream

    def stop(self) -> None:
        """Stop and close the stream; queued blocks stay readable."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    @property
    def running(self) -> bool:
        return self._stream is not None

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """Next ``(frames, channels)`` block, or ``None`` if none arrived within ``timeout``."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __enter__(self) -> MicrophoneSource:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
