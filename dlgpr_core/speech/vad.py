"""Streaming utterance segmentation with Silero VAD.

Whisper hallucinates on silence and noise and wastes compute on it, so only audio that Silero
calls speech reaches the transcriber, cut into utterances at pauses. Silero's ONNX model is
stateful and takes fixed 512-sample windows at 16 kHz; this class turns arbitrary chunk
sizes into those windows and keeps the state across calls.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW = 512
"""Silero's window at 16 kHz (32 ms); the model rejects any other size."""


@dataclass
class Segment:
    """One utterance. ``start_s``/``end_s`` are stream times (seconds since the first sample
    pushed) of the bounds of ``audio``, padding included, so ``len(audio) / 16000`` equals
    ``end_s - start_s``."""

    audio: np.ndarray
    start_s: float
    end_s: float
    end_of_speech_monotonic: float
    forced: bool = False
    """True when cut at ``max_utterance_s`` rather than at a pause."""


def load_vad_model() -> Any:
    """Load Silero VAD's bundled ONNX model (no download: the weights ship in the wheel)."""
    import warnings

    from silero_vad import load_silero_vad

    with warnings.catch_warnings():
        # silero-vad 6.2 still uses importlib.resources.path; nothing for us to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad(onnx=True)


class SpeechSegmenter:
    """Cut a 16 kHz mono stream into utterances.

    Speech starts when a window's probability reaches ``threshold`` and ends after
    ``min_silence_ms`` of windows below ``threshold - 0.15`` (Silero's own hysteresis, so a
    word that dips briefly does not split an utterance). Bursts shorter than
    ``min_speech_ms`` are dropped as clicks; ``pad_ms`` of audio is kept on both sides because
    Whisper loses soft word onsets and endings that the VAD trims.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        threshold: float = 0.5,
        min_speech_ms: int = 250,
        min_silence_ms: int = 500,
        max_utterance_s: float = 30.0,
        pad_ms: int = 200,
        model: Any = None,
    ) -> None:
        if sample_rate != 16000:
            raise ValueError("SpeechSegmenter works at 16 kHz; normalise with to_mono_16k first")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_speech_samples = int(min_speech_ms * sample_rate / 1000)
        self.min_silence_samples = int(min_silence_ms * sample_rate / 1000)
        self.max_samples = max(int(max_utterance_s * sample_rate), WINDOW)
        self.pad_samples = int(pad_ms * sample_rate / 1000)
        self._model = model if model is not None else load_vad_model()
        self.reset()

    def reset(self) -> None:
        """Forget the stream: new stream times, empty buffers, fresh model state."""
        self._model.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pos = 0  # stream sample index of the next window's first sample
        # the window that triggers plus enough earlier ones to cover the start padding
        self._preroll: deque[np.ndarray] = deque(maxlen=-(-self.pad_samples // WINDOW) + 1)
        self._triggered = False
        self._utt: list[np.ndarray] = []
        self._utt_start = 0
        self._speech_start = 0
        self._last_speech_end = 0
        self.last_probability = 0.0

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open (e.g. to show "listening" on the robot)."""
        return self._triggered

    def _prob(self, window: np.ndarray) -> float:
        import torch

        return float(self._model(torch.from_numpy(window), self.sample_rate).item())

    def push(self, chunk: np.ndarray) -> list[Segment]:
        """Feed any number of samples; return the utterances this chunk completed."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self._pending.size:
            x = np.concatenate([self._pending, x])
        n = (x.size // WINDOW) * WINDOW
        self._pending = x[n:].copy()
        out: list[Segment] = []
        for i in range(0, n, WINDOW):
            seg = self._step(np.ascontiguousarray(x[i : i + WINDOW]))
            if seg is not None:
                out.append(seg)
        return out

    def _step(self, window: np.ndarray) -> Segment | None:
        pos = self._pos
        end = pos + WINDOW
        self._pos = end
        p = self._prob(window)
        self.last_probability = p
        if not self._triggered:
            self._preroll.append(window)
            if p >= self.threshold:
                self._triggered = True
                self._utt = list(self._preroll)
                self._preroll.clear()
                self._utt_start = end - sum(w.size for w in self._utt)
                self._utt_start = max(self._utt_start, end - WINDOW - self.pad_samples)
                self._speech_start = pos
                self._last_speech_end = end
            return None

        self._utt.append(window)
        if p >= self.threshold:
            self._last_speech_end = end
        elif p < self.neg_threshold and end - self._last_speech_end >= self.min_silence_samples:
            return self._close(end, forced=False)
        if end - self._utt_start >= self.max_samples:
            return self._close(end, forced=True)
        return None

    def _close(self, end: int, forced: bool) -> Segment | None:
        """Emit the open utterance (or drop it as a click) and go back to waiting."""
        now = time.monotonic()
        audio = np.concatenate(self._utt) if self._utt else np.zeros(0, np.float32)
        buf_start = end - audio.size
        speech_len = self._last_speech_end - self._speech_start
        cut = end if forced else min(self._last_speech_end + self.pad_samples, end)
        start = max(self._utt_start, buf_start)
        audio = audio[start - buf_start : cut - buf_start]
        keep = (self._preroll.maxlen or 1) - 1  # pre-roll windows for the next utterance
        tail = self._utt[max(len(self._utt) - keep, 0) :] if keep else []
        if forced:
            # speech goes on: the next piece starts right here, with no gap and no overlap
            self._utt = []
            self._utt_start = end
            self._speech_start = end
            self._last_speech_end = end
        else:
            self._triggered = False
            self._utt = []
            self._preroll.clear()
            self._preroll.extend(tail)
        if not forced and speech_len < self.min_speech_samples:
            return None
        return Segment(
            audio=np.ascontiguousarray(audio, dtype=np.float32),
            start_s=start / self.sample_rate,
            end_s=cut / self.sample_rate,
            end_of_speech_monotonic=now,
            forced=forced,
        )

    def pending(self) -> Segment | None:
        """The open utterance exactly as it will be emitted if the pause under way lasts
        until ``min_silence_ms``: once the pause is ``pad_ms`` long, the cut (``pad_ms``
        after the last speech) is in the buffer and no later window can change it, unless
        speech resumes (a new pause, a new cut) or ``max_utterance_s`` forces a cut first.
        None while speaking, before that, with no open utterance, or for a click that the
        close would drop. Lets a caller transcribe during the rest of the pause (same audio,
        same words) instead of after it; its ``end_of_speech_monotonic`` is now, not the
        close."""
        if not self._triggered or not self._utt:
            return None
        end = self._pos
        cut = self._last_speech_end + self.pad_samples
        if end < cut or self._last_speech_end - self._speech_start < self.min_speech_samples:
            return None
        audio = np.concatenate(self._utt)
        buf_start = end - audio.size
        start = max(self._utt_start, buf_start)
        return Segment(
            audio=np.ascontiguousarray(audio[start - buf_start : cut - buf_start]),
            start_s=start / self.sample_rate,
            end_s=cut / self.sample_rate,
            end_of_speech_monotonic=time.monotonic(),
        )

    def flush(self) -> list[Segment]:
        """End of stream: close an open utterance (with the unwindowed remainder) if it holds
        enough speech, then reset so the segmenter can be reused."""
        out: list[Segment] = []
        if self._triggered:
            if self._pending.size:
                self._utt.append(self._pending)
                self._pos += self._pending.size
            self._last_speech_end = min(self._last_speech_end, self._pos)
            end = self._pos
            seg = self._close_at_end(end)
            if seg is not None:
                out.append(seg)
        self.reset()
        return out

    def _close_at_end(self, end: int) -> Segment | None:
        speech_len = self._last_speech_end - self._speech_start
        if speech_len < self.min_speech_samples:
            return None
        audio = np.concatenate(self._utt)
        buf_start = end - audio.size
        start = max(self._utt_start, buf_start)
        cut = min(self._last_speech_end + self.pad_samples, end)
        return Segment(
            audio=np.ascontiguousarray(audio[start - buf_start : cut - buf_start]),
            start_s=start / self.sample_rate,
            end_s=cut / self.sample_rate,
            end_of_speech_monotonic=time.monotonic(),
        )
