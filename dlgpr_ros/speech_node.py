"""The `speech_input` node: what a person says (or types) becomes a dlgpr_ros/Utterance.

Audio arrives as dlgpr_ros/AudioChunk on `audio` (from a bag, another node or a remote
microphone) or straight from a local microphone (``use_microphone``). Either way it goes
through :class:`dlgpr_core.speech.pipeline.SpeechPipeline` (resample, Silero VAD, Whisper,
hallucination gates) on a worker thread: a Whisper decode takes around a second on a robot CPU,
and running it in a subscription callback would stall every other callback of the executor
(questions, typed text, even the audio itself would queue up in DDS). Callbacks therefore only
validate and enqueue; the worker publishes the utterances.

Typed text (`typed_text`, std_msgs/String) bypasses speech recognition, for a keyboard or a
chat front end. The node also follows the dialogue manager: once a `dialogue_state` awaits an
answer it stamps the next utterances with that dialogue's id and the round they answer, so
the manager can tell an answer from a new description; the dialogue ending ends that.

Parameters are read once at start-up; restart the node to change them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_msgs.msg import String

from dlgpr_core.speech.audio import ChunkRejectedError, check_chunk
from dlgpr_core.speech.pipeline import SpeechPipeline
from dlgpr_core.speech.transcriber import Transcript
from dlgpr_ros.msg import AudioChunk, DialogueState, Utterance
from dlgpr_ros.qos import TOPIC_QOS

NODE_NAME = "speech_input"

AUDIO_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE
)
"""Reliable and deep: a lost chunk cuts a word in half, and a bag replayed as fast as possible
delivers a whole utterance (~50 chunks of 100 ms) in one burst."""

QUEUE_CHUNKS = 3000
"""Backlog bound (~5 min of 100 ms chunks): beyond it chunks are dropped and counted rather
than letting a stuck worker grow memory without limit."""
QUEUE_BYTES = 128 * 1024 * 1024
"""The same backlog bounded in decoded bytes: 3000 chunks of the largest accepted size would
be gigabytes."""
MAX_CHUNK_BYTES = 1024 * 1024
"""Default `max_chunk_bytes`: ~2.7 s of 48 kHz stereo float32, 32 s of 16 kHz mono int16;
chunks are meant to be ~100 ms."""
TIMINGS_KEPT = 1000
"""Utterance timings kept for diagnostics (the latest; a node that runs for weeks must not
keep one per utterance for ever)."""


@dataclass
class _AudioJob:
    samples: np.ndarray
    sample_rate: int
    channels: int


class _Flush:
    """Queue marker: end of stream, transcribe the open utterance."""


class _Stop:
    """Queue marker: the worker thread exits."""


class _Warmup:
    """Queue marker: run one throw-away decode so the first real answer is not slow."""


_Job = _AudioJob | _Flush | _Stop | _Warmup


@dataclass
class UtteranceTiming:
    """Per spoken utterance, for diagnostics and the benchmarks."""

    text: str
    audio_seconds: float
    compute_seconds: float
    latency_s: float | None
    """End of speech as the VAD saw it (after ``min_silence_ms`` of silence) to publish."""

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0


@dataclass
class SpeechStats:
    """Counters a test or a diagnostics publisher can read (guarded by the node's lock)."""

    chunks_received: int = 0
    chunks_dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    pipeline_errors: int = 0
    utterances_published: int = 0
    timings: deque[UtteranceTiming] = field(default_factory=lambda: deque(maxlen=TIMINGS_KEPT))
    """The latest `TIMINGS_KEPT` utterances' timings, oldest first."""


def _descriptor(kind: int, description: str) -> ParameterDescriptor:
    return ParameterDescriptor(type=kind, description=description, read_only=True)


def _device_arg(device: str) -> int | str | None:
    """sounddevice takes an index or a name substring; ROS parameters are one type, so a
    string of digits means an index and an empty string the system default."""
    device = device.strip()
    if not device:
        return None
    return int(device) if device.isdigit() else device


class SpeechNode(Node):
    """Audio / typed text in, dlgpr_ros/Utterance out (see the module docstring)."""

    def __init__(
        self,
        node_name: str = NODE_NAME,
        *,
        pipeline: SpeechPipeline | None = None,
        **node_kwargs: Any,
    ) -> None:
        """``node_name`` and ``node_kwargs`` as for any Node (bringup passes its own name,
        context and parameter overrides); ``pipeline`` replaces the one built from the
        parameters (tests, other models)."""
        super().__init__(node_name, **node_kwargs)
        p_str, p_bool = ParameterType.PARAMETER_STRING, ParameterType.PARAMETER_BOOL
        p_int, p_dbl = ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE
        declared: Sequence[tuple[str, Any, int, str]] = [
            ("transcriber", "faster-whisper", p_str,
             "Transcriber spec: 'faster-whisper' (bundled tiny.en), 'faster-whisper:<dir>', "
             "'openai-whisper:<name or .pt>'"),
            ("use_microphone", False, p_bool,
             "Capture from a local input device in addition to the 'audio' topic"),
            ("device", "", p_str,
             "Microphone: sounddevice index (digits) or name substring; empty = default"),
            ("sample_rate", 16000, p_int, "Microphone capture rate in Hz (resampled to 16 kHz)"),
            ("channels", 1, p_int, "Microphone channels (averaged to mono)"),
            ("block_ms", 100, p_int, "Microphone block length in ms"),
            ("vad_threshold", 0.5, p_dbl, "Silero VAD speech probability threshold in (0, 1)"),
            ("min_silence_ms", 500, p_int,
             "Silence that ends an utterance; lower answers faster but may split sentences"),
            ("early_decode", True, p_bool,
             "Transcribe an utterance during its final pause, once its audio is final "
             "(pad_ms after the last speech), so the words are ready sooner after the "
             "silence ends it; a pause that was not the end costs a wasted decode"),
            ("language", "en", p_str,
             "Spoken language code for Whisper and for typed text; empty = auto-detect"),
            ("warmup", True, p_bool,
             "Decode a second of silence at start so the first answer is not slower"),
            ("max_chunk_bytes", MAX_CHUNK_BYTES, p_int,
             "Largest serialized AudioChunk accepted (data and metadata); larger ones are "
             "dropped and counted (too_large) before decoding"),
        ]  # fmt: skip
        for name, default, kind, description in declared:
            self.declare_parameter(name, default, _descriptor(kind, description))
        self.language = str(self.get_parameter("language").value).strip()
        self.max_chunk_bytes = int(self.get_parameter("max_chunk_bytes").value)

        self.stats = SpeechStats()
        self._lock = threading.Lock()
        self._awaiting: tuple[str, int] | None = None  # (dialogue_id, question round)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._queued_bytes = 0  # decoded samples waiting in the queue (under the lock)
        self.pipeline = pipeline if pipeline is not None else self._build_pipeline()

        self._utterance_pub = self.create_publisher(Utterance, "utterance", TOPIC_QOS["utterance"])
        # raw: a malformed CDR payload must become a counted drop in our callback, not an
        # exception inside the executor's deserialisation
        self.create_subscription(AudioChunk, "audio", self._on_audio, AUDIO_QOS, raw=True)
        self.create_subscription(String, "typed_text", self._on_typed, TOPIC_QOS["typed_text"])
        self.create_subscription(
            DialogueState, "dialogue_state", self._on_state, TOPIC_QOS["dialogue_state"]
        )

        self._worker = threading.Thread(target=self._work, name="speech_worker", daemon=True)
        self._worker.start()
        if self.get_parameter("warmup").value:
            self._queue.put(_Warmup())

        self._mic: Any = None
        self._mic_thread: threading.Thread | None = None
        self._mic_stop = threading.Event()
        if self.get_parameter("use_microphone").value:
            self._start_microphone()
        self.get_logger().info(
            f"ready: transcriber={self.get_parameter('transcriber').value!r}, "
            f"microphone={'on' if self._mic is not None else 'off'}"
        )

    # ----------------------------------------------------------------------- set-up

    def _build_pipeline(self) -> SpeechPipeline:
        from dlgpr_core.speech.transcriber import create_transcriber
        from dlgpr_core.speech.vad import SpeechSegmenter

        spec = str(self.get_parameter("transcriber").value)
        transcriber = create_transcriber(
            spec,
            language=self.language or None,
            # the segmenter below already ran Silero on every sample of the segment
            vad_gate=False,
        )
        segmenter = SpeechSegmenter(
            threshold=float(self.get_parameter("vad_threshold").value),
            min_silence_ms=int(self.get_parameter("min_silence_ms").value),
        )
        return SpeechPipeline(
            transcriber, segmenter, early_decode=bool(self.get_parameter("early_decode").value)
        )

    def _start_microphone(self) -> None:
        from dlgpr_core.speech.capture import MicrophoneSource

        rate = int(self.get_parameter("sample_rate").value)
        channels = int(self.get_parameter("channels").value)
        self._mic = MicrophoneSource(
            _device_arg(str(self.get_parameter("device").value)),
            rate,
            channels,
            block_ms=int(self.get_parameter("block_ms").value),
        )
        self._mic.start()  # AudioDeviceError propagates: a robot without its mic must say so
        self._mic_thread = threading.Thread(
            target=self._pump_microphone, args=(rate, channels), name="speech_mic", daemon=True
        )
        self._mic_thread.start()

    def _pump_microphone(self, rate: int, channels: int) -> None:
        """Move blocks from the capture queue to the pipeline queue; the PortAudio callback
        itself only copies (see MicrophoneSource)."""
        while not self._mic_stop.is_set():
            block = self._mic.read(timeout=0.2)
            if block is not None:
                self._enqueue(_AudioJob(block, rate, channels))

    # -------------------------------------------------------------------- callbacks

    def _drop(self, reason: str, detail: str) -> None:
        with self._lock:
            self.stats.chunks_dropped += 1
            self.stats.drop_reasons[reason] = self.stats.drop_reasons.get(reason, 0) + 1
            total = self.stats.chunks_dropped
        self.get_logger().warning(f"dropped audio chunk ({reason}): {detail} [{total} dropped]")

    def _enqueue(self, job: _Job) -> None:
        size = job.samples.nbytes if isinstance(job, _AudioJob) else 0
        with self._lock:
            full = self._queued_bytes + size > QUEUE_BYTES
            if not full:
                self._queued_bytes += size
        if full:
            self._drop("backlog", f"worker is {QUEUE_BYTES} bytes behind")
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._queued_bytes -= size
            self._drop("backlog", f"worker is {QUEUE_CHUNKS} chunks behind")

    def _on_audio(self, data: bytes) -> None:
        with self._lock:
            self.stats.chunks_received += 1
        if len(data) > self.max_chunk_bytes:  # before decoding: a huge chunk costs nothing
            self._drop(
                "too_large",
                f"{len(data)} bytes > max_chunk_bytes={self.max_chunk_bytes}; "
                "send chunks of ~100 ms",
            )
            return
        try:
            msg = deserialize_message(data, AudioChunk)
        except Exception as exc:  # any CDR decoding failure
            self._drop("undecodable", f"{type(exc).__name__}: {exc}"[:200])
            return
        samples = self._validate(msg)
        if samples is None:
            return
        if samples.size:
            self._enqueue(_AudioJob(samples, int(msg.sample_rate), int(msg.channels)))
        if msg.end_of_stream:
            self._enqueue(_Flush())

    def _validate(self, msg: AudioChunk) -> np.ndarray | None:
        """The decoded ``(frames, channels)`` samples, or None after counting the drop
        (the checks: `dlgpr_core.speech.audio.check_chunk`)."""
        raw = msg.data.tobytes() if hasattr(msg.data, "tobytes") else bytes(msg.data)
        try:
            return check_chunk(msg.encoding, msg.stream_id, msg.sample_rate, msg.channels, raw)
        except ChunkRejectedError as exc:
            self._drop(exc.reason, exc.detail)
            return None

    def _on_typed(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self.get_logger().warning("ignoring empty typed_text")
            return
        self._publish(text, Utterance.SOURCE_TYPED, 1.0, self.language)

    def _on_state(self, msg: DialogueState) -> None:
        """Follows the dialogue manager: once a dialogue awaits an answer, the next
        utterances answer it (a person may split an answer into several sentences) until
        another dialogue awaits one or this one ends."""
        awaiting = msg.phase == DialogueState.PHASE_AWAITING_ANSWER and msg.pending_question.text
        with self._lock:
            if awaiting:
                self._awaiting = (msg.dialogue_id, int(msg.round))
            elif msg.done and self._awaiting is not None and self._awaiting[0] == msg.dialogue_id:
                self._awaiting = None
        if awaiting:
            self.get_logger().info(f"awaiting an answer for {msg.dialogue_id} round {msg.round}")

    @property
    def awaiting(self) -> tuple[str, int] | None:
        """(dialogue_id, question round) the next utterance answers, or None (a new
        description)."""
        with self._lock:
            return self._awaiting

    def _publish(self, text: str, source: int, confidence: float, language: str) -> None:
        """Called from the executor (typed) and from the worker (speech): publishers are
        thread-safe, the dialogue bookkeeping is read under the lock."""
        with self._lock:
            awaiting = self._awaiting
        msg = Utterance(
            dialogue_id=awaiting[0] if awaiting else "",
            # the answer to the question built from round r's candidates is a_{r+1}
            round=awaiting[1] + 1 if awaiting else 0,
            text=text,
            source=source,
            confidence=float(min(max(confidence, 0.0), 1.0)),
            language=language,
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        self._utterance_pub.publish(msg)
        with self._lock:
            self.stats.utterances_published += 1

    # ------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if isinstance(job, _AudioJob):
                with self._lock:
                    self._queued_bytes -= job.samples.nbytes
            try:
                if isinstance(job, _Stop):
                    return
                self._run(job)
            except Exception as exc:  # keep listening: one bad segment must not end speech
                with self._lock:
                    self.stats.pipeline_errors += 1
                self.get_logger().error(f"speech pipeline failed: {type(exc).__name__}: {exc}")
                self.pipeline.reset()
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        if isinstance(job, _Warmup):
            self.pipeline.transcriber.transcribe(np.zeros(16000, dtype=np.float32))
            return
        if isinstance(job, _Flush):
            transcripts = self.pipeline.flush()
        else:
            assert isinstance(job, _AudioJob)
            transcripts = self.pipeline.feed(job.samples, job.sample_rate, job.channels)
        for tr in transcripts:
            self._publish_transcript(tr)

    def _publish_transcript(self, tr: Transcript) -> None:
        self._publish(tr.text, Utterance.SOURCE_SPEECH, tr.confidence, tr.language)
        timing = UtteranceTiming(tr.text, tr.audio_seconds, tr.seconds, tr.latency_s)
        with self._lock:
            self.stats.timings.append(timing)
        self.get_logger().info(
            f"heard {tr.text!r} (confidence {tr.confidence:.2f}, "
            f"RTF {timing.real_time_factor:.2f}, latency {tr.latency_s or 0.0:.2f} s)"
        )

    def idle(self) -> bool:
        """True when every enqueued chunk has been processed (for tests and shutdown)."""
        with self._queue.all_tasks_done:
            return self._queue.unfinished_tasks == 0

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until :meth:`idle` or the timeout; returns whether it became idle."""
        deadline = time.monotonic() + timeout_s
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def destroy_node(self) -> None:
        """Stop the microphone, then the worker (what is queued is abandoned: on shutdown
        nobody is left to answer), then the node."""
        self._mic_stop.set()
        if self._mic is not None:
            self._mic.stop()
        if self._mic_thread is not None:
            self._mic_thread.join(timeout=2.0)
        while True:  # make room so the stop marker cannot block on a full queue
            try:
                self._queue.get_nowait()
                self._queue.task_done()
            except queue.Empty:
                break
        self._queue.put(_Stop())
        self._worker.join(timeout=10.0)
        self.pipeline.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or a ROS shutdown."""
    rclpy.init(args=args)
    # created before the node (whose start-up takes seconds) so that a Ctrl-C at any moment
    # meets a fully built executor
    executor = SingleThreadedExecutor()
    node: SpeechNode | None = None
    try:
        node = SpeechNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
