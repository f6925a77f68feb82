"""The whole dialogue graph over real DDS: bringup, a simulated user, complete dialogues.

The nodes run as they would on a robot (each on its own executor thread, real topics, the
real dlgpr-lite encoder over a small SynthCities map); the test only listens on the topics and
reads the simulated user's record, so a node that drops, mixes or repeats anything shows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rclpy  # no importorskip: without the ROS wheels this must fail
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from dlgpr_core.data.annotations import PlaceAnnotation, read_annotations
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.state import DialogueConfig
from dlgpr_core.evaluation.oracle import write_oracle_evidence
from dlgpr_core.users.fact import FactUser
from dlgpr_ros import conversions
from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.msg import (
    CandidateList,
    CandidatePlace,
    DialogueState,
    Localization,
    Question,
    Utterance,
)
from dlgpr_ros.qos import TOPIC_QOS

pytestmark = pytest.mark.ros
CITY = "Testville"


def graph_overrides(map_path: Path, **more: Any) -> dict[str, Any]:
    """The test graphs read the maps' oracle evidence (exact, deterministic: these tests
    check the graph's plumbing, not an annotator; test_bringup_images_only runs the learned
    one)."""
    return {"map_path": str(map_path), "evidence": "oracle", **more}


def build_map(
    root: Path,
) -> tuple[Path, dict[str, PlaceAnnotation], dict[str, tuple[float, float]]]:
    """A 30-place city and its dlgpr-lite map with oracle evidence; places by id and their
    map positions."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.mapdb.access import load_encoder
    from dlgpr_core.mapdb.database import MapDatabase
    from dlgpr_core.synth import generate_city

    generate_city(root, CITY, 30, views_per_place=2, seed=5, workers=1, progress=False)
    enc = load_encoder("dlgpr-lite", None)  # the retrieval node reuses this load
    with MapDatabase.create(root / "map", enc.fingerprint, enc.dim) as db:
        db.set_encoder_spec("dlgpr-lite", None)
        db.build(scan_dataset(root, fmt="gsv"), enc, progress=False, source_kind="gsv")
        write_oracle_evidence(db, read_annotations(root / "Annotations" / f"{CITY}.jsonl"))
        hits = db.search("street", enc, k=30)
    places = {
        namespaced_place_id(p.city, p.place_id): p
        for p in read_annotations(root / "Annotations" / f"{CITY}.jsonl")
    }
    return root / "map", places, {h.place_id: (h.lat, h.lon) for h in hits}


def core_dialogues(map_path: Path, places: dict[str, PlaceAnnotation]) -> dict[str, Any]:
    """What the in-process engine does for each place's caption: the graph must agree."""
    from dlgpr_core.dialogue.engine import DialogueEngine
    from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
    from dlgpr_core.dialogue.registry import make_questioner
    from dlgpr_core.evidence.knowledge import EvidenceSource
    from dlgpr_core.mapdb.access import load_encoder
    from dlgpr_core.mapdb.database import MapDatabase

    enc = load_encoder("dlgpr-lite", None)
    with MapDatabase.open(map_path) as db:
        evidence = EvidenceSource.of_map(db.evidence, "oracle")
        # config/dialogue.yaml's settings: the belief over the top 50 at its temperature,
        # search_k 200, the questioner planning over every candidate the belief covers.
        config = DialogueConfig(search_k=200)
        engine = DialogueEngine(
            lambda text, k: db.search(text, enc, k=k),
            make_questioner("info-gain", evidence=evidence, top_k=None),
            config,
            reranker=EvidenceUpdate(evidence, temperature=config.temperature),
        )
        return {pid: engine.run(p.caption, FactUser(p), pid) for pid, p in places.items()}


class Probe(Node):
    """Listens to everything the graph says and can speak as a person."""

    def __init__(self, graph: Graph) -> None:
        super().__init__("dlgpr_test_probe", context=graph.context)
        self.lock = threading.Lock()
        self.states: dict[str, list[DialogueState]] = {}
        self.questions: dict[str, list[Question]] = {}
        self.localizations: dict[str, list[Localization]] = {}
        for msg_type, topic, store in (
            (DialogueState, "dialogue_state", self.states),
            (Question, "question", self.questions),
            (Localization, "localization", self.localizations),
        ):
            self.create_subscription(
                msg_type, topic, lambda m, s=store: self._keep(s, m), TOPIC_QOS[topic]
            )
        self.pub = self.create_publisher(Utterance, "utterance", TOPIC_QOS["utterance"])
        graph.add(self)

    def _keep(self, store: dict[str, list[Any]], msg: Any) -> None:
        with self.lock:
            store.setdefault(msg.dialogue_id, []).append(msg)

    def say(self, text: str, dialogue_id: str = "", round_: int = 0) -> None:
        self.pub.publish(
            Utterance(dialogue_id=dialogue_id, text=text, round=round_, confidence=1.0)
        )

    def finished(self, dialogue_id: str) -> bool:
        """The dialogue's final state and its localization have both arrived. They travel on
        two topics and DDS orders messages within a topic only, so the final state can come
        first (seen once in CI: KeyError in `_check_finished`)."""
        with self.lock:
            states = self.states.get(dialogue_id)
            return bool(states and states[-1].done and self.localizations.get(dialogue_id))

    def last(self, dialogue_id: str) -> DialogueState | None:
        with self.lock:
            states = self.states.get(dialogue_id)
            return states[-1] if states else None


def wait_connected(graph: Graph, probe: Probe) -> None:
    """Discovery takes a moment; publishing before it would lose the message (volatile)."""
    dm = graph.node("dialogue_manager")
    assert graph.run_until(
        lambda: (
            probe.pub.get_subscription_count() >= 1 and dm._state_pub.get_subscription_count() >= 3
        ),
        10,
    ), "the probe never matched the dialogue manager"


def run_dialogue(graph: Graph, probe: Probe, target: str, timeout: float = 40) -> str:
    sim = graph.node("simulated_user")
    sim.start(target)
    assert graph.run_until(lambda: sim.dialogue_of(target) is not None, 15), "no dialogue id"
    did = sim.dialogue_of(target)
    assert did is not None
    assert graph.run_until(lambda: probe.finished(did), timeout), (
        f"dialogue {did} did not finish: {probe.last(did)}, "
        f"localizations {probe.localizations.get(did)}"
    )
    return did


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Any:
    return build_map(tmp_path_factory.mktemp("rosgraph"))


@pytest.fixture(scope="module")
def graph(city: Any) -> Iterator[Graph]:
    map_path, _, _ = city
    overrides = graph_overrides(map_path, request_timeout=1.0, max_resends=8)
    with bringup(None, overrides, "typed", simulate=True) as g:
        yield g


@pytest.fixture(scope="module")
def probe(graph: Graph) -> Probe:
    p = Probe(graph)
    wait_connected(graph, p)
    return p


def _check_finished(probe: Probe, did: str, place: PlaceAnnotation, positions: Any) -> None:
    states = probe.states[did]
    final = states[-1]
    assert final.status in (DialogueState.STATUS_CONFIDENT, DialogueState.STATUS_MAX_ROUNDS)
    assert [s.done for s in states].count(True) == 1 and states[-1].done
    assert all(s.status == DialogueState.STATUS_ACTIVE for s in states[:-1])
    assert [s.round for s in states] == sorted(s.round for s in states)
    assert final.history[0] == place.caption.strip()
    # One question per answered round, each asked on `question`, never a probe twice.
    assert len(final.questions) == final.round == len(final.history) - 1
    asked = [q.text for q in probe.questions.get(did, [])]
    assert asked[: len(final.questions)] == list(final.questions)
    assert len(set(final.questions)) == len(final.questions), list(final.questions)
    # The answers are this place's: no mixing with another dialogue. The simulated user
    # answers the structured probe each Question carries (as a person hears what is meant),
    # so the expected answers come from those probes, not from re-parsing the text.
    user = FactUser(place)
    sent = probe.questions.get(did, [])[: len(final.questions)]
    expected = [user.answer(conversions.question_msg_to_core(q)) for q in sent]
    assert list(final.history[1:]) == expected
    assert final.round <= 5
    if final.status == DialogueState.STATUS_MAX_ROUNDS:
        assert final.round == 5
    (loc,) = probe.localizations[did]
    assert loc.place_id == final.best_place_id == final.candidates[0].place_id
    assert loc.confident == (final.status == DialogueState.STATUS_CONFIDENT)
    lat, lon = positions[loc.place_id]
    assert (loc.fix.latitude, loc.fix.longitude) == pytest.approx((lat, lon), abs=1e-9)


def test_complete_dialogue_with_simulated_user(graph: Graph, probe: Probe, city: Any) -> None:
    map_path, places, positions = city
    core = core_dialogues(map_path, places)
    found = [pid for pid, r in core.items() if r.final.candidates[0].place_id == pid]
    missed = [pid for pid in core if pid not in found]
    assert found, "the core engine localises no place of the test city: nothing to compare"
    targets = [found[0], *missed[:1]]
    for target in targets:
        did = run_dialogue(graph, probe, target)
        final = probe.states[did][-1]
        expected = core[target].final
        # The distributed dialogue is the in-process one: same questions, same answer.
        assert list(final.questions) == [q.text for q in expected.questions]
        assert final.best_place_id == expected.candidates[0].place_id
        _check_finished(probe, did, places[target], positions)
        states = probe.states[did]
        # retrieving -> (awaiting question -> awaiting answer)* -> done
        assert states[0].detail == "retrieving" and states[0].round == 0
        n_q = len(states[-1].questions)
        assert [s.detail for s in states[1:-1]] == ["awaiting question", "awaiting answer"] * n_q
    assert graph.node("dialogue_manager").counters["resends"] == 0
    did = graph.node("simulated_user").dialogue_of(targets[0])
    (loc,) = probe.localizations[did]
    assert loc.place_id == targets[0]
    assert (loc.fix.latitude, loc.fix.longitude) == pytest.approx(positions[targets[0]], abs=1e-9)


def test_two_dialogues_interleaved(graph: Graph, probe: Probe, city: Any) -> None:
    _, places, positions = city
    sim = graph.node("simulated_user")
    targets = ("Testville:7", "Testville:25")
    for t in targets:
        sim.start(t)
    assert graph.run_until(lambda: all(sim.dialogue_of(t) for t in targets), 15)
    ids = [sim.dialogue_of(t) for t in targets]
    assert ids[0] != ids[1]
    assert graph.run_until(lambda: all(probe.finished(str(d)) for d in ids), 60)
    for t, did in zip(targets, ids, strict=True):
        _check_finished(probe, str(did), places[t], positions)


def test_lifecycle_deactivate_activate(graph: Graph, probe: Probe, city: Any) -> None:
    """An inactive retrieval node answers nothing; once re-activated, the manager's resend
    completes the waiting dialogue."""
    _, places, positions = city
    retrieval = graph.node("retrieval")
    sim = graph.node("simulated_user")
    ignored = retrieval.counters["ignored_inactive"]
    assert retrieval.trigger_deactivate() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
    target = "Testville:14"
    before = sim.dialogue_of(target)
    sim.start(target)
    assert graph.run_until(lambda: retrieval.counters["ignored_inactive"] >= ignored + 2, 10)
    did = sim.dialogue_of(target)
    assert did is not None and did != before
    last = probe.last(did)
    assert last is not None and not last.done and last.detail == "retrieving"
    assert retrieval.trigger_activate() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
    assert graph.run_until(lambda: probe.finished(did), 40)
    _check_finished(probe, did, places[target], positions)
    assert graph.node("dialogue_manager").counters["resends"] >= 2


def test_a_stuck_node_does_not_stall_the_others(graph: Graph, probe: Probe, city: Any) -> None:
    """Each node spins on its own thread (`spin.NodeThreads`): a listener stuck in its
    callbacks holds up only itself. With one executor for the whole graph, the stuck
    callbacks took every thread of its pool and no dialogue moved."""
    _, places, positions = city
    release = threading.Event()

    def wait(_msg: DialogueState) -> None:
        release.wait(60)

    dm = graph.node("dialogue_manager")
    listeners = dm._state_pub.get_subscription_count()
    stuck = Node("dlgpr_stuck_listener", context=graph.context)
    group = ReentrantCallbackGroup()
    for _ in range(6):
        stuck.create_subscription(
            DialogueState,
            "dialogue_state",
            wait,
            TOPIC_QOS["dialogue_state"],
            callback_group=group,
        )
    graph.add(stuck)
    try:
        assert graph.run_until(lambda: dm._state_pub.get_subscription_count() >= listeners + 6)
        target = "Testville:3"
        did = run_dialogue(graph, probe, target)
        _check_finished(probe, did, places[target], positions)
        assert not release.is_set()  # the listener was stuck all along
    finally:
        release.set()
        graph.executor.remove_node(stuck)
        stuck.destroy_node()


def test_questioner_reads_ahead_the_evidence_of_ranked_places(city: Any) -> None:
    """The questioner reads the evidence of the places on `candidates` as they are ranked
    (while the manager re-ranks them), so the state that follows finds it in memory."""
    from dlgpr_ros.questioner_node import QuestionerNode

    map_path, places, _ = city
    ids = sorted(places)[:7]
    context = Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    qn = QuestionerNode(
        context=context,
        parameter_overrides=[
            Parameter("map_path", value=str(map_path)),
            Parameter("evidence", value="oracle"),
        ],
    )
    ranker = Node("dlgpr_test_ranker", context=context)
    pub = ranker.create_publisher(CandidateList, "candidates", TOPIC_QOS["candidates"])
    try:
        executor.add_node(qn)
        executor.add_node(ranker)

        def spin_until(done: Any, timeout: float = 10.0) -> bool:
            end = time.monotonic() + timeout
            while not done() and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            return bool(done())

        assert spin_until(lambda: pub.get_subscription_count() >= 1)
        candidates = [CandidatePlace(place_id=p, rank=i) for i, p in enumerate(ids)]
        pub.publish(CandidateList(dialogue_id="d", round=0, candidates=candidates))
        assert spin_until(lambda: qn.counters["prefetched"] >= len(ids)), dict(qn.counters)
        assert qn.counters["prefetched"] == len(ids) and not qn.counters["errors"]
        assert qn.evidence.prefetch(ids) == 0  # all of them in memory already
        assert all(e is not None for e in qn.evidence.get_many(ids))
    finally:
        executor.shutdown()
        qn.destroy_node()
        ranker.destroy_node()
        rclpy.try_shutdown(context=context)
