"""Audio in, transcripts out: normalise, segment with VAD, transcribe, gate.

Early decoding (``early_decode``): the VAD closes an utterance only after ``min_silence_ms``
of silence, and Whisper then needs most of a second for it on a robot CPU. But the audio
of the utterance is final well before the close: the cut keeps ``pad_ms`` after the last
speech, so once a pause is ``pad_ms`` long the segmenter knows the exact samples it will
emit if the pause goes on (`SpeechSegmenter.pending`). The pipeline transcribes those on a
decoder thread while the rest of the pause is still being listened to; when the VAD closes
the utterance with the very same samples, the transcript is ready or nearly (same audio,
same words), otherwise (the person spoke on) that decode is dropped and the final audio is
transcribed as before. The price is a wasted decode per pause longer than ``pad_ms`` that
was not the end of what the person said.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from dlgpr_core.speech.audio import to_mono_16k
from dlgpr_core.speech.transcriber import Transcriber, Transcript
from dlgpr_core.speech.vad import Segment, SpeechSegmenter

_Decoded = tuple[Transcript | None, str | None]
"""A transcript (None: gated) and the gate's reason."""


class SpeechPipeline:
    """Glue that a ROS node or a CLI drives with raw audio blocks.

    Transcription happens inside :meth:`feed` (on a decoder thread of its own with
    ``early_decode``, which :meth:`feed` waits for when an utterance closes); the caller
    decides on which thread to feed (a ROS node should not do it in the audio subscription
    callback of a single-threaded executor). Counters let a node publish diagnostics such as
    "12 utterances, 3 gated".
    """

    def __init__(
        self, transcriber: Transcriber, segmenter: SpeechSegmenter, early_decode: bool = False
    ) -> None:
        self.transcriber = transcriber
        self.segmenter = segmenter
        self.segments_total = 0
        self.segments_gated = 0
        self.gate_reasons: dict[str, int] = {}
        self.last_segments: list[Segment] = []
        self.early_decode = early_decode
        self.early_used = 0
        """Utterances whose transcript came from a decode started during their final pause."""
        self.early_wasted = 0
        """Decodes started during a pause that was not the end (the person spoke on)."""
        # One decoder thread: the transcriber is never used by two threads at once.
        self._decoder = (
            ThreadPoolExecutor(1, thread_name_prefix="speech_decode") if early_decode else None
        )
        self._early: tuple[tuple[float, float], Future[_Decoded]] | None = None

    def feed(self, samples: np.ndarray, sample_rate: int, channels: int = 1) -> list[Transcript]:
        """Push raw audio; return transcripts of the utterances it completed."""
        audio = to_mono_16k(samples, sample_rate, channels)
        out = self._transcribe(self.segmenter.push(audio))
        self._decode_early()
        return out

    def flush(self) -> list[Transcript]:
        """End of stream: transcribe whatever utterance is still open."""
        out = self._transcribe(self.segmenter.flush())
        self._drop_early()
        return out

    def reset(self) -> None:
        """Forget the stream (e.g. after an error): the segmenter and any early decode."""
        self.segmenter.reset()
        self._drop_early()

    def close(self) -> None:
        """Stops the decoder thread (a decode in progress finishes on its own)."""
        self._drop_early()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    # -- decoding ---------------------------------------------------------------------------

    def _decode(self, audio: np.ndarray) -> _Decoded:
        tr = self.transcriber.transcribe(audio)
        return tr, getattr(self.transcriber, "last_gate_reason", None)

    def _decode_early(self) -> None:
        """Starts transcribing the open utterance once its audio is final (see the module
        docstring); a pause that ended in more speech drops the decode it started."""
        if self._decoder is None:
            return
        seg = self.segmenter.pending()
        key = (seg.start_s, seg.end_s) if seg is not None else None
        if self._early is not None and self._early[0] == key:
            return  # the pause goes on: its decode stands
        if seg is None and not self.segmenter.in_speech:
            return  # nothing open (the utterance just closed or never started)
        self._drop_early(wasted=True)
        if seg is not None and key is not None:
            self._early = (key, self._decoder.submit(self._decode, seg.audio))

    def _drop_early(self, wasted: bool = False) -> None:
        if self._early is not None:
            self._early[1].cancel()  # not started yet: never runs
            self.early_wasted += int(wasted)
            self._early = None

    def _decoded(self, seg: Segment) -> _Decoded:
        """The transcript of `seg`: its early decode when that decoded these very samples,
        else decoded now (on the decoder thread, after any decode in progress)."""
        early, self._early = self._early, None
        if early is not None and early[0] == (seg.start_s, seg.end_s):
            self.early_used += 1
            return early[1].result()
        if early is not None:
            early[1].cancel()
            self.early_wasted += 1
        if self._decoder is None:
            return self._decode(seg.audio)
        return self._decoder.submit(self._decode, seg.audio).result()

    def _transcribe(self, segments: list[Segment]) -> list[Transcript]:
        self.last_segments = segments
        out: list[Transcript] = []
        for seg in segments:
            self.segments_total += 1
            tr, reason = self._decoded(seg)
            if tr is None:
                self.segments_gated += 1
                key = str(reason or "unknown")
                self.gate_reasons[key] = self.gate_reasons.get(key, 0) + 1
                continue
            tr.latency_s = time.monotonic() - seg.end_of_speech_monotonic
            out.append(tr)
        return out
