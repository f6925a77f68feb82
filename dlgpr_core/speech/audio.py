"""Audio normalisation shared by every speech source.

Microphones, ROS audio topics and WAV fixtures arrive in whatever rate, width and channel
layout the hardware chose; Whisper and Silero VAD both want float32 mono at 16 kHz, so every
path funnels through :func:`to_mono_16k` and nothing downstream has to care where audio came
from.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

TARGET_RATE = 16000
"""The rate Whisper and Silero VAD were trained on."""

_ENCODINGS: dict[str, tuple[str, int]] = {
    # name -> (numpy dtype, bytes per sample)
    "S16LE": ("<i2", 2),
    "F32LE": ("<f4", 4),
}

CLIP_LEVEL = 0.999
"""Samples at or above this magnitude are counted as clipped (int16 full scale maps to ~1.0)."""


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Scale integer PCM to [-1, 1]; floats are trusted but clamped so a bad driver cannot
    feed Whisper values it never saw in training."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype == np.int32:
        return (samples.astype(np.float64) / 2147483648.0).astype(np.float32)
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned with a 128 offset
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.floating):
        return np.clip(samples.astype(np.float32, copy=False), -1.0, 1.0)
    raise TypeError(f"unsupported sample dtype {samples.dtype}; use int16, int32 or float")


def to_mono_16k(samples: np.ndarray, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Return float32 mono 16 kHz audio in [-1, 1].

    ``samples`` may be 1-D interleaved (``channels`` says how to split it) or 2-D
    ``(frames, channels)`` as sounddevice delivers it. Channels are averaged, not picked, so a
    mic array with one dead channel still gives usable (if quieter) audio.

    Each call is resampled on its own (``scipy.signal.resample_poly``), so feeding short
    chunks at a rate other than 16 kHz leaves tiny filter edge effects at chunk boundaries;
    Whisper does not notice them at 100 ms chunks.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    x = np.asarray(samples)
    if x.ndim == 1:
        if channels > 1:
            if x.size % channels:
                raise ValueError(
                    f"{x.size} interleaved samples do not split into {channels} channels"
                )
            x = x.reshape(-1, channels)
    elif x.ndim == 2:
        if x.shape[1] != channels:
            raise ValueError(f"array has {x.shape[1]} channels, caller said {channels}")
    else:
        raise ValueError(f"expected 1-D or (frames, channels) audio, got shape {x.shape}")
    y = _to_float(x)
    if y.ndim == 2:
        y = y.mean(axis=1, dtype=np.float32)
    if sample_rate != TARGET_RATE and y.size:
        from scipy.signal import resample_poly

        g = gcd(TARGET_RATE, sample_rate)
        y = resample_poly(y, TARGET_RATE // g, sample_rate // g).astype(np.float32)
        # the polyphase filter can overshoot full scale slightly on clipped input
        np.clip(y, -1.0, 1.0, out=y)
    return np.ascontiguousarray(y, dtype=np.float32)


def decode_pcm(data: bytes, encoding: str, channels: int) -> np.ndarray:
    """Turn raw PCM bytes (e.g. from an audio_common ROS message) into a ``(frames,
    channels)`` array of the encoding's own dtype; :func:`to_mono_16k` does the scaling.

    A byte count that is not whole frames means the publisher and the subscriber disagree on
    the format; guessing would turn speech into noise silently, so it is an error.
    """
    key = encoding.upper()
    if key not in _ENCODINGS:
        raise ValueError(f"unknown PCM encoding {encoding!r}; supported: {sorted(_ENCODINGS)}")
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    dtype, width = _ENCODINGS[key]
    frame = width * channels
    if len(data) % frame:
        raise ValueError(
            f"{len(data)} bytes is not a multiple of the {frame}-byte frame "
            f"({encoding}, {channels} channel(s))"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64


class ChunkRejectedError(ValueError):
    """An audio chunk that must not reach the pipeline; `reason` is the counter the speech
    node drops it under, the message says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def bad_text(value: str) -> bool:
    """Metadata that did not survive as text (rclpy replaces invalid UTF-8 with U+FFFD) or
    holds control characters: the publisher is writing something other than an AudioChunk."""
    return "\ufffd" in value or any(ord(c) < 32 or ord(c) == 127 for c in value)


def check_chunk(
    encoding: str, stream_id: str, sample_rate: int, channels: int, data: bytes
) -> np.ndarray:
    """The decoded ``(frames, channels)`` samples of one received audio chunk (the fields of
    a dlgpr_ros/AudioChunk), or `ChunkRejectedError`; every check here is something that
    would otherwise raise in the speech worker or feed Whisper noise. Pure, so the speech
    node's checks can be tested (and fuzzed) without ROS."""
    if bad_text(encoding) or bad_text(stream_id):
        raise ChunkRejectedError(
            "bad_metadata", f"stream_id={stream_id[:40]!r} encoding={encoding[:40]!r}"
        )
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise ChunkRejectedError("bad_sample_rate", f"sample_rate={sample_rate}")
    if not 0 < channels <= MAX_CHANNELS:
        raise ChunkRejectedError("bad_channels", f"channels={channels}")
    try:
        samples = decode_pcm(data, encoding, int(channels))
    except ValueError as exc:
        reason = "bad_encoding" if "encoding" in str(exc) else "bad_length"
        raise ChunkRejectedError(reason, str(exc)[:200]) from None
    if samples.dtype.kind == "f" and samples.size and not np.isfinite(samples).all():
        raise ChunkRejectedError("non_finite", "NaN or infinite float samples")
    return samples


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 ``(frames,)`` or ``(frames, channels)`` plus its rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    return np.asarray(data, dtype=np.float32), int(rate)


def clipping_ratio(x: np.ndarray) -> float:
    """Fraction of samples at full scale: a cheap sign that the mic gain is too high, which
    the transcriber uses to discount its confidence."""
    y = np.asarray(x)
    if y.size == 0:
        return 0.0
    if y.dtype == np.int16:
        return float(np.mean((y >= 32767) | (y <= -32768)))
    return float(np.mean(np.abs(y) >= CLIP_LEVEL))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for digital silence); for diagnostics
    such as "the mic is muted" or "the gain is far too low"."""
    y = np.asarray(x)
    if y.size == 0:
        return float("-inf")
    if y.dtype == np.int16:
        y = y.astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if rms <= 0.0:
        return float("-inf")
    return 20.0 * float(np.log10(rms))
