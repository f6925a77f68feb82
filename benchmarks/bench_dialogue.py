"""What the ROS layer costs on top of dlgpr_core, for dialogue rounds and for speech.

Everything runs in one process and every figure that matters is a ratio of two timings
taken in the same run (these machines are shared and noisy: absolute milliseconds are
printed for context only, never compared across runs):

- round latency: publishing a person's answer (dlgpr_ros/Utterance) until the next
  Question (or the final DialogueState) arrives, over real DDS through the brought-up
  graph (dialogue manager -> retrieval node -> dialogue manager -> questioner node),
  against `DialogueEngine.step` called directly with the same map, encoder, questioner and
  the very same answers;
- speech: flite-spoken place captions streamed as AudioChunks into the speech node, against
  the same audio fed straight into a `SpeechPipeline` sharing the node's Whisper model:
  real-time factor and end-of-speech -> utterance latency (end of speech: the VAD closing the
  utterance, `min_silence_ms` after the last speech). Both decode early (during the final
  pause, the node's default); the same pipeline without early decoding is the baseline, fed
  the same audio in the same run.

ROS and direct measurements are interleaved (one dialogue / one sentence each, in turn) so
that a load spike on the machine hits both sides rather than skewing the ratio.

Run: ``make bench`` (or ``python benchmarks/bench_dialogue.py --quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rich.console import Console
from rich.table import Table

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.engine import DialogueEngine
from dlgpr_core.speech.pipeline import SpeechPipeline
from dlgpr_core.speech.transcriber import Transcriber
from dlgpr_core.speech.vad import Segment, SpeechSegmenter
from dlgpr_core.users.fact import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.graph import launch_plan
from dlgpr_ros.msg import AudioChunk, DialogueState, Question, Utterance
from dlgpr_ros.qos import TOPIC_QOS
from dlgpr_ros.speech_node import AUDIO_QOS, SpeechNode
from dlgpr_ros.spin import spin_through_errors

CITY = "Benchtown"
ENCODER = "dlgpr-lite"
EVIDENCE = "learned"  # the graph's default annotator (config/dialogue.yaml)
CHUNK_MS = 100
TAIL_SILENCE_S = 1.0
"""Silence after each sentence: longer than the node's min_silence_ms (500), so the VAD
closes the utterance as it would for a live speaker, not the end-of-stream flush."""


# -- statistics ---------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: no interpolation, so p95 of few samples is a real sample."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


# -- the map --------------------------------------------------------------------------------


def ensure_map(root: Path, places: int, views: int) -> Path:
    """A SynthCities city and its dlgpr-lite map, made once under `root` and then reused:
    generating and encoding it takes longer than the measurement it serves."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.evidence.registry import make_annotator
    from dlgpr_core.mapdb.access import load_encoder
    from dlgpr_core.mapdb.database import MapDatabase
    from dlgpr_core.synth import generate_city

    city_dir = root / f"{CITY}-{places}x{views}"
    done = city_dir / ".complete-evidence"  # maps from before evidence existed are redone
    if done.is_file():
        return city_dir / "map"
    if city_dir.exists():  # an interrupted build: start over rather than trust it
        import shutil

        shutil.rmtree(city_dir)
    generate_city(city_dir, CITY, places, views_per_place=views, seed=3, progress=False)
    enc = load_encoder(ENCODER, None)  # the retrieval node reuses this cached load
    with MapDatabase.create(city_dir / "map", enc.fingerprint, enc.dim) as db:
        db.set_encoder_spec(ENCODER, None)
        db.build(scan_dataset(city_dir, fmt="gsv"), enc, progress=False, source_kind="gsv")
        # The graph's default evidence: what the robot itself derives from the images.
        db.annotate(make_annotator(EVIDENCE, enc), progress=False, workers=1)
    done.write_text("ok\n")
    return city_dir / "map"


# -- dialogue rounds over ROS ---------------------------------------------------------------


class RoundProbe(Node):
    """The person's side of the protocol, with receive times taken in the callbacks (not when
    the benchmark thread wakes up, which would add its own scheduling delay)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__("dlgpr_bench_probe", context=graph.context)
        self._cond = threading.Condition()
        self.events: dict[str, list[tuple[float, Question | DialogueState]]] = {}
        self._requests = 0
        self.dialogue_of: dict[str, str] = {}
        """request id -> id of the dialogue this probe started with it."""
        self.create_subscription(
            DialogueState, "dialogue_state", self._on_msg, TOPIC_QOS["dialogue_state"]
        )
        self.create_subscription(Question, "question", self._on_msg, TOPIC_QOS["question"])
        self.pub = self.create_publisher(Utterance, "utterance", TOPIC_QOS["utterance"])
        graph.add(self)

    def _on_msg(self, msg: Question | DialogueState) -> None:
        now = time.perf_counter()
        with self._cond:
            # The manager echoes the request id of the description that opened a dialogue.
            if isinstance(msg, DialogueState) and msg.request_id.startswith("bench-"):
                self.dialogue_of.setdefault(msg.request_id, msg.dialogue_id)
            self.events.setdefault(msg.dialogue_id, []).append((now, msg))
            self._cond.notify_all()

    def say(self, text: str, dialogue_id: str = "", round_: int = 0) -> tuple[float, str]:
        """Publishes; returns the time just before publishing and, without a dialogue id
        (the text opens a new dialogue), the request id its first state will echo."""
        msg = Utterance(dialogue_id=dialogue_id, text=text, round=round_, confidence=1.0)
        if not dialogue_id:
            with self._cond:
                self._requests += 1
                msg.request_id = f"bench-{self._requests}"
        t = time.perf_counter()
        self.pub.publish(msg)
        return t, msg.request_id

    def wait_for(self, cond: Callable[[], Any], timeout: float) -> Any:
        """Waits until `cond()` (called under the lock) returns something truthy."""
        with self._cond:
            result = self._cond.wait_for(cond, timeout)
        if not result:
            raise TimeoutError("the graph did not answer in time")
        return result

    def next_event(
        self, did: str, start: int, round_: int, timeout: float
    ) -> tuple[int, float, Question | DialogueState]:
        """The first Question asked for `round_`, or the final state, at index >= start."""

        def find() -> tuple[int, float, Question | DialogueState] | None:
            for i, (t, msg) in enumerate(self.events.get(did, [])[start:], start):
                if isinstance(msg, Question) and msg.round == round_ and msg.text.strip():
                    return i, t, msg
                if isinstance(msg, DialogueState) and msg.done:
                    return i, t, msg
            return None

        found: tuple[int, float, Question | DialogueState] = self.wait_for(find, timeout)
        return found

    def asked(self, did: str, start: int, round_: int, timeout: float) -> DialogueState:
        """The manager's state putting the question of `round_` to the person (or the final
        state), at index >= start. A person answers that state's question, as the graph's
        users do: an answer sent on the questioner's Question alone can reach the manager
        before the Question does, and the manager ignores an answer to a question it has not
        asked yet (a stale answer)."""

        def find() -> DialogueState | None:
            for _, msg in self.events.get(did, [])[start:]:
                if isinstance(msg, DialogueState) and (
                    msg.done
                    or (msg.phase == DialogueState.PHASE_AWAITING_ANSWER and msg.round == round_)
                ):
                    return msg
            return None

        state: DialogueState = self.wait_for(find, timeout)
        return state


@dataclass
class RosDialogue:
    """One dialogue as the person saw it over ROS."""

    dialogue_id: str
    d0: str
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    start_s: float = 0.0
    """d0 published -> first question (or final state)."""
    round_s: list[float] = field(default_factory=list)
    """Per answered round: answer published -> next question (or final state)."""
    status: int = 0


def ros_dialogue(probe: RoundProbe, place: PlaceAnnotation, timeout: float) -> RosDialogue:
    """Drives one dialogue with a FactUser answering, one message at a time."""
    d0 = place.caption.strip()
    user = FactUser(place)
    t0, request_id = probe.say(d0)
    did: str = probe.wait_for(lambda: probe.dialogue_of.get(request_id), timeout)
    start = 0
    _, t, msg = probe.next_event(did, start, 0, timeout)
    out = RosDialogue(did, d0, start_s=t - t0)
    while isinstance(msg, Question):
        state = probe.asked(did, start, int(msg.round), timeout)
        if state.done:  # the manager ended the dialogue on this question (e.g. a repeat)
            msg = state
            break
        answer = user.answer(conversions.question_msg_to_core(msg))  # its probe, exactly
        out.questions.append(msg.text)
        out.answers.append(answer)
        start = len(probe.events[did])  # what arrives from now on may answer this answer
        t0, _ = probe.say(answer, did, int(msg.round) + 1)
        _, t, msg = probe.next_event(did, start, int(msg.round) + 1, timeout)
        if t <= t0:
            raise RuntimeError(f"{did}: a reply older than its answer (a mixed-up dialogue)")
        out.round_s.append(t - t0)
    out.status = int(msg.status)
    return out


@dataclass
class DirectDialogue:
    """The same dialogue replayed on `DialogueEngine` with the ROS dialogue's answers."""

    start_s: float
    round_s: list[float]
    same_questions: bool


def direct_dialogue(engine: DialogueEngine, ros: RosDialogue) -> DirectDialogue:
    """Replaying the recorded answers makes every round retrieve exactly the text the ROS
    round retrieved, so both sides do the same encoder and FAISS work."""
    t0 = time.perf_counter()
    state = engine.start(ros.d0, ros.dialogue_id)
    start_s = time.perf_counter() - t0
    asked: list[str] = []
    rounds: list[float] = []
    for answer in ros.answers:
        if state.pending_question is None:
            break
        asked.append(state.pending_question.text)
        t0 = time.perf_counter()
        state = engine.step(state, answer)
        rounds.append(time.perf_counter() - t0)
    same = asked == ros.questions and len(rounds) == len(ros.round_s) and state.done
    return DirectDialogue(start_s, rounds, same)


@dataclass
class RoundFigures:
    """Section 1 of the report."""

    dialogues: int
    rounds: int
    same_questions: int
    ros_round_ms: list[float]
    direct_round_ms: list[float]
    ros_start_ms: list[float]
    direct_start_ms: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    """The dialogue settings both sides ran with, as the graph's nodes read them."""


def bench_rounds(
    map_path: Path, n_dialogues: int, timeout: float, baseline: bool = False
) -> RoundFigures:
    """Interleaves ROS and direct dialogues over targets drawn from the map's places; with
    `baseline`, through the graph as it ran before issue 13's latency work (`graph_up`)."""
    from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
    from dlgpr_core.evidence.knowledge import EvidenceSource
    from dlgpr_core.mapdb.access import map_encoder
    from dlgpr_core.mapdb.database import MapDatabase
    from dlgpr_core.mapdb.ground_truth import map_annotations
    from dlgpr_ros.questioner_node import build_questioner

    places = map_annotations(map_path)
    ids = sorted(places)
    targets = random.Random(11).sample(ids, min(len(ids), n_dialogues + 1))
    overrides = {
        "map_path": str(map_path),
        "questioner.questioner": "info-gain",
        "evidence": EVIDENCE,
    }
    ros_runs: list[RosDialogue] = []
    direct_runs: list[DirectDialogue] = []
    with MapDatabase.open(map_path) as db, graph_up(overrides, baseline) as graph:
        enc = map_encoder(db)  # the retrieval node's cached encoder: the same object
        dm, qn = graph.node("dialogue_manager"), graph.node("questioner")
        # Both sides run with the settings the graph's nodes were given (config/dialogue.yaml
        # and the overrides above), read back from the running nodes, so they ask, re-rank
        # and stop alike whatever the defaults are; no time-outs on the synchronous side.
        config = replace(dm.config, request_timeout=None, answer_timeout=None)
        evidence = EvidenceSource.of_map(db.evidence, str(qn.get_parameter("evidence").value))
        update = str(dm.get_parameter("update").value)
        engine = DialogueEngine(
            lambda text, k: db.search(text, enc, k=k),
            build_questioner(
                str(qn.get_parameter("questioner").value),
                evidence,
                int(qn.get_parameter("top_k").value),
                int(qn.get_parameter("seed").value),
            ),
            config,
            reranker=(
                EvidenceUpdate(evidence, temperature=config.temperature)
                if update == "evidence"
                else None
            ),
        )
        settings = {
            "manager": {k: getattr(config, k) for k in ("top_k", "search_k", "temperature")}
            | {"max_rounds": config.max_rounds, "confidence": config.confidence},
            "update": update,
            "questioner": {
                k: qn.get_parameter(k).value for k in ("questioner", "evidence", "top_k", "seed")
            },
        }
        probe = RoundProbe(graph)
        graph.run_until(
            lambda: (
                probe.pub.get_subscription_count() >= 1
                and dm._state_pub.get_subscription_count() >= 3
            ),
            15,
        )
        for i, pid in enumerate(targets):
            ros = ros_dialogue(probe, places[pid], timeout)
            direct = direct_dialogue(engine, ros)
            if i == 0:
                continue  # warm-up: first forward passes, lazy allocations, DDS matching
            ros_runs.append(ros)
            direct_runs.append(direct)
        probe.destroy_node()
    return RoundFigures(
        dialogues=len(ros_runs),
        rounds=sum(len(r.round_s) for r in ros_runs),
        same_questions=sum(d.same_questions for d in direct_runs),
        ros_round_ms=[s * 1e3 for r in ros_runs for s in r.round_s],
        direct_round_ms=[s * 1e3 for d in direct_runs for s in d.round_s],
        ros_start_ms=[r.start_s * 1e3 for r in ros_runs],
        direct_start_ms=[d.start_s * 1e3 for d in direct_runs],
        settings=settings,
    )


class SharedExecutor:
    """The baseline's executor: every node of the graph on one MultiThreadedExecutor of 4
    threads, as bringup spun them before `spin.NodeThreads` (same interface)."""

    def __init__(self, graph: Graph) -> None:
        self.executor = MultiThreadedExecutor(num_threads=4, context=graph.context)
        self._on_error = graph._on_callback_error
        self._thread: threading.Thread | None = None

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)

    def remove_node(self, node: Node, timeout_sec: float = 10.0) -> None:
        self.executor.remove_node(node)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=spin_through_errors, args=(self.executor, self._on_error), daemon=True
            )
            self._thread.start()

    def shutdown(self, timeout_sec: float | None = None) -> None:
        self.executor.shutdown(timeout_sec=timeout_sec)
        if self._thread is not None:
            self._thread.join(timeout_sec)


@contextmanager
def graph_up(overrides: dict[str, Any], baseline: bool = False) -> Iterator[Graph]:
    """The typed-input graph, its INFO chatter (one log line per question) silenced so the
    console stays readable; warnings and errors still show.

    Without the console printer: it renders every round to stdout, which would bury the
    report and time the terminal rather than the dialogue protocol. With `baseline`, the
    graph as it ran before issue 13's latency work, measured in the same run: one shared
    MultiThreadedExecutor and no evidence read-ahead in the questioner.
    """
    if baseline:
        plan = launch_plan(
            None, {**overrides, "questioner.prefetch_evidence": False}, "typed",
            print_dialogue=False,
        )  # fmt: skip
        graph = Graph(plan)
        graph.executor = cast(Any, SharedExecutor(graph))
        try:
            for planned in plan:
                graph.start(planned.name)
        except BaseException:
            graph.shutdown()
            raise
        graph.spin_in_thread()
    else:
        graph = bringup(None, overrides, "typed", print_dialogue=False)
    try:
        for node in graph.nodes.values():
            node.get_logger().set_level(LoggingSeverity.WARN)
        yield graph
    finally:
        graph.shutdown()


# -- speech -----------------------------------------------------------------------------------


class TimedSegmenter(SpeechSegmenter):
    """Remembers when the VAD closed each utterance, so the node's latency can be taken up to
    the moment the Utterance is *received*, which its own stats cannot see."""

    def __init__(self) -> None:
        super().__init__(threshold=0.5, min_silence_ms=500)  # the node's parameter defaults
        self.ends: list[float] = []

    def push(self, chunk: np.ndarray) -> list[Segment]:
        segs = super().push(chunk)
        self.ends.extend(s.end_of_speech_monotonic for s in segs)
        return segs

    def flush(self) -> list[Segment]:
        segs = super().flush()
        self.ends.extend(s.end_of_speech_monotonic for s in segs)
        return segs


def spoken_sentences(texts: Sequence[str], workdir: Path) -> list[tuple[str, np.ndarray, int]]:
    """flite renders each text (8 kHz mono int16): the voice tiny.en understands best here."""
    import soundfile as sf

    from dlgpr_core.speech.synthesize import synthesize

    out = []
    for i, text in enumerate(texts):
        wav = synthesize(text, workdir / f"sentence_{i}.wav")
        data, rate = sf.read(str(wav), dtype="int16")
        out.append((text, np.asarray(data).reshape(-1), int(rate)))
    return out


def _chunks(samples: np.ndarray, rate: int) -> list[np.ndarray]:
    step = rate * CHUNK_MS // 1000
    tail = np.zeros(int(TAIL_SILENCE_S * rate), dtype=np.int16)
    x = np.concatenate([samples, tail])
    return [np.ascontiguousarray(x[i : i + step]) for i in range(0, len(x), step)]


def _paced(chunks: Sequence[np.ndarray], rate: int, realtime: bool) -> Iterator[np.ndarray]:
    """Yields chunks as a live microphone would deliver them (realtime) or all at once."""
    start = time.monotonic()
    sent = 0
    for chunk in chunks:
        if realtime:
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        sent += len(chunk)
        yield chunk


class SpeechProbe(Node):
    """Streams AudioChunks into the speech node and timestamps the Utterances it gets back."""

    def __init__(self, context: Context, namespace: str) -> None:
        super().__init__("dlgpr_bench_speech_probe", namespace=namespace, context=context)
        self.audio = self.create_publisher(AudioChunk, "audio", AUDIO_QOS)
        self._cond = threading.Condition()
        self.received: list[tuple[float, Utterance]] = []
        self.create_subscription(Utterance, "utterance", self._on_utt, TOPIC_QOS["utterance"])

    def _on_utt(self, msg: Utterance) -> None:
        now = time.monotonic()
        with self._cond:
            self.received.append((now, msg))
            self._cond.notify_all()

    def wait_count(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= n, timeout)


@dataclass
class SpeechFigures:
    """Section 2 of the report."""

    sentences: int
    pace: str
    audio_s: list[float]
    node_rtf: list[float]
    direct_rtf: list[float]
    node_latency_ms: list[float]
    direct_latency_ms: list[float]
    heard: list[dict[str, str]]
    baseline_rtf: list[float] = field(default_factory=list)
    baseline_latency_ms: list[float] = field(default_factory=list)
    """The direct pipeline without early decoding (decode after the VAD closes)."""
    early: dict[str, int] = field(default_factory=dict)
    """The node pipeline's early decodes: used (the transcript) and wasted."""


def bench_speech(texts: Sequence[str], realtime: bool, timeout: float) -> SpeechFigures:
    """Node and direct pipeline share one Whisper model (loaded once, same weights, same
    threads), so the ratio isolates queueing, message (de)serialisation and DDS."""
    from dlgpr_core.speech.transcriber import create_transcriber

    transcriber: Transcriber = create_transcriber("faster-whisper", language="en", vad_gate=False)
    ns = "/dlgpr_bench_speech"
    figures = SpeechFigures(len(texts), "realtime" if realtime else "burst", [], [], [], [], [], [])
    with tempfile.TemporaryDirectory() as tmp:
        sentences = spoken_sentences(texts, Path(tmp))
    context = Context()
    rclpy.init(context=context)
    node_seg = TimedSegmenter()
    node_pipeline = SpeechPipeline(transcriber, node_seg, early_decode=True)  # node default
    speech = SpeechNode(namespace=ns, context=context, pipeline=node_pipeline)
    speech.get_logger().set_level(LoggingSeverity.WARN)
    probe = SpeechProbe(context, ns)
    executor = SingleThreadedExecutor(context=context)  # as the node's own main() spins it
    executor.add_node(speech)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 15
        while (
            probe.audio.get_subscription_count() < 1
            or probe.count_publishers(f"{ns}/utterance") < 1
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the speech node never matched the probe")
            time.sleep(0.02)
        if not speech.wait_idle(120):  # model warm-up decode
            raise TimeoutError("the speech node did not finish warming up")
        direct = SpeechPipeline(
            transcriber, SpeechSegmenter(threshold=0.5, min_silence_ms=500), early_decode=True
        )
        baseline = SpeechPipeline(transcriber, SpeechSegmenter(threshold=0.5, min_silence_ms=500))
        for text, samples, rate in sentences:
            chunks = _chunks(samples, rate)
            # node
            n_before, ends_before = len(probe.received), len(node_seg.ends)
            for i, chunk in enumerate(_paced(chunks, rate, realtime)):
                probe.audio.publish(
                    AudioChunk(
                        stream_id="bench",
                        sample_rate=rate,
                        channels=1,
                        encoding="S16LE",
                        data=chunk.astype("<i2").tobytes(),
                        end_of_stream=i == len(chunks) - 1,
                    )
                )
            got = probe.wait_count(n_before + 1, timeout)
            speech.wait_idle(timeout)
            if got and len(node_seg.ends) > ends_before:
                t_recv, msg = probe.received[n_before]
                figures.node_latency_ms.append((t_recv - node_seg.ends[ends_before]) * 1e3)
                figures.node_rtf.append(speech.stats.timings[-1].real_time_factor)
                node_text = msg.text
            else:
                node_text = "<nothing>"
            # direct
            transcripts = []
            for chunk in _paced(chunks, rate, realtime):
                transcripts += direct.feed(chunk, rate, 1)
            transcripts += direct.flush()
            if transcripts:
                tr = transcripts[0]
                figures.direct_latency_ms.append((tr.latency_s or 0.0) * 1e3)
                figures.direct_rtf.append(tr.real_time_factor)
            # baseline: decoding only once the VAD closed the utterance
            before = []
            for chunk in _paced(chunks, rate, realtime):
                before += baseline.feed(chunk, rate, 1)
            before += baseline.flush()
            if before:
                figures.baseline_latency_ms.append((before[0].latency_s or 0.0) * 1e3)
                figures.baseline_rtf.append(before[0].real_time_factor)
            figures.audio_s.append(len(samples) / rate)
            figures.heard.append(
                {
                    "said": text,
                    "node": node_text,
                    "direct": transcripts[0].text if transcripts else "<nothing>",
                    "baseline": before[0].text if before else "<nothing>",
                }
            )
        direct.close()
        figures.early = {
            "used": node_pipeline.early_used,
            "wasted": node_pipeline.early_wasted,
        }
    finally:
        executor.shutdown()
        spinner.join(timeout=5)
        probe.destroy_node()
        speech.destroy_node()
        rclpy.try_shutdown(context=context)
    return figures


# -- report -----------------------------------------------------------------------------------


def _row(
    table: Table, what: str, ros: Sequence[float], direct: Sequence[float], q: float, unit: str
) -> dict[str, float]:
    a, b = _pct(ros, q), _pct(direct, q)
    fmt = "{:.3f}" if unit == "" else "{:.1f}"
    table.add_row(what, f"p{q:g}", fmt.format(a), fmt.format(b), f"{_ratio(a, b):.2f}")
    return {"ros": round(a, 4), "direct": round(b, 4), "ratio": round(_ratio(a, b), 3)}


def _rounds(table: Table, figures: RoundFigures, label: str) -> dict[str, Any]:
    """The counts of one graph's rounds and its answer -> next question rows (p50, p95)."""
    out: dict[str, Any] = {
        "dialogues": figures.dialogues,
        "answered_rounds": figures.rounds,
        "dialogues_with_same_questions": figures.same_questions,
    }
    for q in (50, 95):
        out[f"round_ms_p{q}"] = _row(
            table, label, figures.ros_round_ms, figures.direct_round_ms, q, "ms"
        )
    return out


def table_markdown(table: Table) -> str:
    """The report's rich table as a Markdown table (for docs/results next to the JSON)."""
    columns = list(table.columns)
    lines = [
        "| " + " | ".join(str(c.header) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in zip(*(list(c.cells) for c in columns), strict=True):
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def report(
    rounds: RoundFigures | None,
    speech: SpeechFigures | None,
    console: Console,
    base: RoundFigures | None = None,
) -> dict:
    """A rich table plus the same figures as a dict for the JSON file."""
    table = Table(title="dlgpr: ROS layer vs dlgpr_core, measured in one run")
    for col, justify in (
        ("measure", "left"),
        ("stat", "left"),
        ("ROS / node", "right"),
        ("direct", "right"),
        ("ratio ROS/direct", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    if rounds is not None:
        r = out["rounds"] = _rounds(table, rounds, "answer -> next question (ms)")
        r["settings"] = rounds.settings
        r["start_ms_p50"] = _row(
            table, "d0 -> first question (ms)", rounds.ros_start_ms, rounds.direct_start_ms,
            50, "ms",
        )  # fmt: skip
    if base is not None:
        out["rounds_baseline"] = {
            "graph": "one MultiThreadedExecutor (4 threads), questioner without read-ahead"
        } | _rounds(table, base, "  baseline graph: answer -> next question (ms)")
    if speech is not None:
        s = out["speech"] = {
            "sentences": speech.sentences,
            "pace": speech.pace,
            "audio_s_total": round(sum(speech.audio_s), 2),
            "transcribed_node": len(speech.node_rtf),
            "transcribed_direct": len(speech.direct_rtf),
            "node_early_decodes": speech.early,
            "heard": speech.heard,
        }
        s["rtf_p50"] = _row(table, "real-time factor", speech.node_rtf, speech.direct_rtf, 50, "")
        for q in (50, 95):
            s[f"eos_latency_ms_p{q}"] = _row(
                table, "end of speech -> utterance (ms)", speech.node_latency_ms,
                speech.direct_latency_ms, q, "ms",
            )  # fmt: skip
        for q in (50, 95):  # the same audio decoded only once the VAD closed it
            before = _pct(speech.baseline_latency_ms, q)
            s[f"baseline_eos_latency_ms_p{q}"] = round(before, 4)
            table.add_row(
                "  baseline: no early decoding, direct (ms)", f"p{q:g}", "", f"{before:.1f}", ""
            )
        s["baseline_rtf_p50"] = round(_pct(speech.baseline_rtf, 50), 4)
    console.print(table)
    out["markdown"] = table_markdown(table)
    if base is not None:
        console.print(
            f"baseline graph: {base.rounds} answered rounds in {base.dialogues} dialogues; "
            f"same questions in {base.same_questions}/{base.dialogues}"
        )
    if rounds is not None:
        console.print(
            f"rounds: {rounds.rounds} answered rounds in {rounds.dialogues} dialogues; "
            f"direct replay asked the same questions in {rounds.same_questions}/"
            f"{rounds.dialogues}; settings {rounds.settings}"
        )
    if speech is not None:
        console.print(
            f"speech: {speech.sentences} flite sentences ({sum(speech.audio_s):.1f} s of audio, "
            f"{speech.pace} pace), transcribed by the node {len(speech.node_rtf)}, "
            f"directly {len(speech.direct_rtf)}; the node's early decodes: {speech.early}"
        )
        for h in speech.heard:
            console.print(
                f"  said {h['said']!r}\n    node     {h['node']!r}\n    direct   {h['direct']!r}"
                f"\n    baseline {h['baseline']!r}"
            )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--places", type=int, default=200, help="places of the generated map")
    parser.add_argument("--views", type=int, default=2, help="images per place")
    parser.add_argument("--dialogues", type=int, default=20, help="timed dialogues (+1 warm-up)")
    parser.add_argument("--sentences", type=int, default=5, help="spoken sentences")
    parser.add_argument(
        "--pace",
        choices=("realtime", "burst"),
        default="realtime",
        help="stream audio as a live microphone would, or as fast as possible (a bag)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 60 places, 5 dialogues, 2 sentences in a burst",
    )
    parser.add_argument(
        "--skip",
        choices=("rounds", "baseline", "speech"),
        action="append",
        default=[],
        help="leave out a part (baseline: the rounds through the graph as it ran before)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data", type=Path, default=Path("data/bench"), help="map cache")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("results/bench_dialogue.json"),
        help="the figures as JSON; the table as Markdown beside it (.md)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.places, args.dialogues, args.sentences, args.pace = 60, 5, 2, "burst"

    # The graph stays on this machine, in a DDS domain of its own: a test run or a second
    # benchmark on the same host must not answer our dialogues.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(101, 200)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    # Tiny models gain nothing from intra-op threads on a loaded 2-core machine.
    torch.set_num_threads(args.threads)

    console = Console()
    t_all = time.perf_counter()
    rounds = speech = base = None
    map_path = ensure_map(args.data, args.places, args.views)
    if "rounds" not in args.skip:
        console.print(f"rounds: {args.dialogues} dialogues on {map_path} ...")
        rounds = bench_rounds(map_path, args.dialogues, args.timeout)
        if "baseline" not in args.skip:
            console.print("rounds through the baseline graph ...")
            base = bench_rounds(map_path, args.dialogues, args.timeout, baseline=True)
    if "speech" not in args.skip:
        from dlgpr_core.mapdb.ground_truth import map_annotations

        places = map_annotations(map_path)
        texts = [places[p].caption for p in sorted(places)[: args.sentences]]
        console.print(f"speech: {len(texts)} sentences, {args.pace} pace ...")
        speech = bench_speech(texts, args.pace == "realtime", args.timeout)
    figures = report(rounds, speech, console, base)
    figures["config"] = {
        "places": args.places,
        "views": args.views,
        "dialogues": args.dialogues,
        "sentences": args.sentences,
        "pace": args.pace,
        "quick": args.quick,
        "threads": args.threads,
        "seconds_total": round(time.perf_counter() - t_all, 1),
    }
    if rounds is not None:
        figures["raw_ms"] = {
            k: [round(v, 3) for v in vs] for k, vs in asdict(rounds).items() if k.endswith("_ms")
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    markdown = figures.pop("markdown")
    args.json.write_text(json.dumps(figures, indent=2))
    md = args.json.with_suffix(".md")
    cfg = figures["config"]
    md.write_text(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {cfg['places']} places x "
        f"{cfg['views']} views, {cfg['dialogues']} dialogues, {cfg['sentences']} sentences "
        f"({cfg['pace']} pace)\n\n{markdown}"
    )
    console.print(f"wrote {args.json} and {md} ({cfg['seconds_total']} s in all)")


if __name__ == "__main__":
    main()
