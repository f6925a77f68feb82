"""A map of images only (no annotations anywhere): the robot still asks and re-ranks.

A user's own street-view data set has images and positions, nothing else. This builds one
(a generated GSV-layout city with its Annotations/ deleted), runs `dlgpr map build` (which
derives the map's evidence with the shipped learned annotator), brings the graph up with
typed input as `dlgpr bringup --input typed` does, and types a description and an answer:
the robot must ask a question and the answer must change the ranking beyond the query text.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from std_msgs.msg import String
from test_ros_graph import Probe

from dlgpr_core.synth import generate_city
from dlgpr_ros.bringup import Graph, bringup
from dlgpr_ros.msg import DialogueState
from dlgpr_ros.qos import TOPIC_QOS

pytestmark = pytest.mark.ros
DLGPR = shutil.which("dlgpr")


@pytest.fixture(scope="module")
def images_only(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    root = tmp_path_factory.mktemp("imgonly") / "data"
    generate_city(root, "Plainville", 8, views_per_place=2, seed=21, progress=False)
    shutil.rmtree(root / "Annotations")  # the robot's data: images and positions only
    shutil.rmtree(root / "SynthCities")
    assert DLGPR, "the dlgpr console script is not installed: run `make setup`"
    proc = subprocess.run(
        [DLGPR, "map", "build", str(root), "--map", str(root / "map")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "evidence learned" in proc.stdout and "16 images annotated" in proc.stdout, proc.stdout
    return root / "map"


@pytest.fixture(scope="module")
def graph(images_only: Path) -> Iterator[Graph]:
    overrides = {"map_path": str(images_only), "request_timeout": 2.0, "max_resends": 6}
    with bringup(None, overrides, "typed", print_dialogue=False) as g:
        yield g


def _typed(graph: Graph) -> Any:
    node = graph.node("dialogue_manager")
    return node.create_publisher(String, "typed_text", TOPIC_QOS["typed_text"])


def test_typed_dialogue_asks_and_reranks(graph: Graph) -> None:
    probe = Probe(graph)
    typed = _typed(graph)
    assert graph.run_until(lambda: typed.get_subscription_count() >= 1, 10)
    assert graph.run_until(lambda: probe.pub.get_subscription_count() >= 1, 10)
    typed.publish(String(data="I see a street with a tree and a shop."))

    def asking() -> DialogueState | None:
        with probe.lock:
            for states in probe.states.values():
                if states[-1].phase == DialogueState.PHASE_AWAITING_ANSWER:
                    return states[-1]
        return None

    assert graph.run_until(lambda: asking() is not None, 60), probe.states
    first = asking()
    assert first is not None and first.pending_question.text
    did = first.dialogue_id
    before = {c.place_id: c.score for c in first.candidates}
    typed.publish(String(data="No."))
    assert graph.run_until(
        lambda: (s := probe.last(did)) is not None and s.round >= 1 and bool(s.candidates), 60
    )
    after = probe.last(did)
    assert after is not None and after.history[1] == "No."
    # The text of the query changed by one word; the evidence update moves scores by
    # multiples of temperature * ln(likelihood), far more than "No." moves an embedding.
    moved = [abs(c.score - before[c.place_id]) for c in after.candidates if c.place_id in before]
    assert moved and max(moved) > 0.01, (before, [(c.place_id, c.score) for c in after.candidates])
