"""Audio in, transcripts out: normalise, segment with VAD, transcribe, gate."""

from __future__ import annotations

import time

import numpy as np

from dlgpr_core.speech.audio import to_mono_16k
from dlgpr_core.speech.transcriber import Transcriber, Transcript
from dlgpr_core.speech.vad import Segment, SpeechSegmenter


class SpeechPipeline:
    """Glue that a ROS node or a CLI drives with raw audio blocks.

    Transcription runs synchronously inside :meth:`feed`; the caller decides on which thread
    (a ROS node should not do it in the audio subscription callback of a single-threaded
    executor). Counters let a node publish diagnostics such as "12 utterances, 3 gated".
    """

    def __init__(self, transcriber: Transcriber, segmenter: SpeechSegmenter) -> None:
        self.transcriber = transcriber
        self.segmenter = segmenter
        self.segments_total = 0
        self.segments_gated = 0
        self.gate_reasons: dict[str, int] = {}
        self.last_segments: list[Segment] = []

    def feed(self, samples: np.ndarray, sample_rate: int, channels: int = 1) -> list[Transcript]:
        """Push raw audio; return transcripts of the utterances it completed."""
        audio = to_mono_16k(samples, sample_rate, channels)
        return self._transcribe(self.segmenter.push(audio))

    def flush(self) -> list[Transcript]:
        """End of stream: transcribe whatever utterance is still open."""
        return self._transcribe(self.segmenter.flush())

    def _transcribe(self, segments: list[Segment]) -> list[Transcript]:
        self.last_segments = segments
        out: list[Transcript] = []
        for seg in segments:
            self.segments_total += 1
            tr = self.transcriber.transcribe(seg.audio)
            if tr is None:
                self.segments_gated += 1
                reason = str(getattr(self.transcriber, "last_gate_reason", None) or "unknown")
                self.gate_reasons[reason] = self.gate_reasons.get(reason, 0) + 1
                continue
            tr.latency_s = time.monotonic() - seg.end_of_speech_monotonic
            out.append(tr)
        return out
