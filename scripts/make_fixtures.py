"""Regenerate the small test fixtures in tests/fixtures/ (committed; run after changing them).

    source scripts/env.sh && python scripts/make_fixtures.py

- spoken_description.wav: one flite sentence at 16 kHz mono 16-bit. flite speaks at 8 kHz;
  it is resampled here once, so the tests exercise the speech node's resampler only where they
  mean to (the 44.1 kHz stereo case) and the file stays well under 200 kB.
- graph_dialogue/: every dialogue topic of the whole bringup graph (typed simulated user,
  place tests/test_ros_e2e.REPLAY_TARGET of the seed-5 test map of tests/test_ros_graph.py,
  dialogue ids ``dlg-replay-N``), recorded with ``bringup(record=...)``; the e2e test replays
  its utterances into a fresh graph and expects the same outputs. Needs a DDS loopback and
  ~20 s; its receive times and metadata dates change on every regeneration.
- typed_dialogue/: a rosbag2 bag (typed_dialogue.mcap + metadata.yaml) of a short typed
  dialogue as the speech node sees and answers it (typed_text and the manager's
  dialogue_state in; utterance out), for replay regression tests and as a sample for Foxglove
  or `ros2 bag info`.

Output is deterministic apart from the bag's metadata dates, so a regenerated fixture only
shows up in a diff when its content changed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SENTENCE = "There is a small cafe with a green awning across from a church."
WAV = FIXTURES / "spoken_description.wav"
BAG = FIXTURES / "typed_dialogue"
GRAPH_BAG = FIXTURES / "graph_dialogue"

TYPED_DIALOGUE: list[tuple[str, str]] = [
    # (dialogue_id awaiting an answer when the text is typed, text)
    ("", "A red brick bank on a corner, with a bus stop in front of it."),
    ("d-42", "Yes, there is a bakery to the left of it."),
    ("d-42", "No trees that I can see."),
]
"""Typed texts; before the 2nd and 3rd a question of dialogue d-42 is asked."""


def make_wav(path: Path = WAV) -> Path:
    """Speak :data:`SENTENCE` with flite and store it as 16 kHz mono PCM_16."""
    import soundfile as sf

    from dlgpr_core.speech.audio import read_wav, to_mono_16k
    from dlgpr_core.speech.synthesize import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        raw = synthesize(SENTENCE, Path(tmp) / "raw.wav", engine="flite")
        samples, rate = read_wav(raw)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    audio = to_mono_16k(samples, rate, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    return path


def dialogue_messages() -> list[tuple[str, object, int]]:
    """The typed dialogue as (topic, message, t_ns): what goes in and what the speech node
    is expected to publish for it."""
    from std_msgs.msg import String

    from dlgpr_ros.msg import DialogueState, Question, Utterance

    out: list[tuple[str, object, int]] = []
    t = 1_764_000_000 * 10**9
    step = 200_000_000  # 0.2 s between messages
    for i, (dialogue_id, text) in enumerate(TYPED_DIALOGUE):
        if dialogue_id:
            # the manager's state once the question of round i - 1 was asked
            q = Question(dialogue_id=dialogue_id, round=i - 1, text=f"question {i}?")
            q.questioner = "info-gain"
            q.probe.kind = "free"
            state = DialogueState(
                dialogue_id=dialogue_id,
                round=i - 1,
                phase=DialogueState.PHASE_AWAITING_ANSWER,
                pending_question=q,
            )
            out.append(("/dialogue_state", state, t))
            t += step
        out.append(("/typed_text", String(data=text), t))
        t += step
        u = Utterance(
            dialogue_id=dialogue_id,
            round=i,
            text=text,
            source=Utterance.SOURCE_TYPED,
            confidence=1.0,
            language="en",
        )
        out.append(("/utterance", u, t))
        t += step
    done = DialogueState(
        dialogue_id="d-42",
        round=2,
        done=True,
        status=DialogueState.STATUS_MAX_ROUNDS,
        phase=DialogueState.PHASE_DONE,
    )
    out.append(("/dialogue_state", done, t))
    return out


def make_bag(path: Path = BAG) -> Path:
    """Write :func:`dialogue_messages` as a rosbag2 MCAP bag (replacing an old one)."""
    from dlgpr_ros.bag import write_bag

    if path.exists():
        shutil.rmtree(path)
    write_bag(path, dialogue_messages())
    return path


def make_graph_bag(path: Path = GRAPH_BAG) -> Path:
    """Record the e2e test's dialogue on the e2e test's map (see the module docstring)."""
    import os
    import random

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(101, 200)))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from test_ros_e2e import REPLAY_TARGET, record_dialogue
    from test_ros_graph import build_map

    torch.set_num_threads(1)  # as the tests' single_thread fixture: same numerics
    if path.exists():
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory() as tmp:
        map_path, _, _ = build_map(Path(tmp))
        record_dialogue(map_path, REPLAY_TARGET, path)
    return path


def main() -> int:
    print(make_wav())
    print(make_bag())
    print(make_graph_bag())
    return 0


if __name__ == "__main__":
    sys.exit(main())
