"""The console printer shows a dialogue in its order, once, from the states the manager sends.

Messages are handed to the callbacks directly (no DDS): what is under test is what a person
reads, including under a re-sent state and a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import rclpy
from rclpy.context import Context

from dlgpr_core.dialogue.belief import softmax_belief
from dlgpr_ros.console_node import DialoguePrinter
from dlgpr_ros.msg import CandidatePlace, DialogueState, Localization

pytestmark = pytest.mark.ros


@pytest.fixture()
def printer() -> Iterator[tuple[DialoguePrinter, list[str]]]:
    context = Context()
    rclpy.init(context=context)
    out: list[str] = []
    node = DialoguePrinter(write=out.append, color=False, context=context)
    try:
        yield node, out
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _cands(*scores: float) -> list[CandidatePlace]:
    """Candidates with the manager's belief, softmax(score / 0.05), as it publishes them."""
    belief = softmax_belief(list(scores), 0.05)
    return [
        CandidatePlace(place_id=f"Town:{i}", score=s, belief=b, rank=i + 1)
        for i, (s, b) in enumerate(zip(scores, belief, strict=True))
    ]


def _state(
    round_: int,
    history: list[str],
    questions: list[str],
    cands: list[CandidatePlace] | None = None,
    *,
    done: bool = False,
    status: int = DialogueState.STATUS_ACTIVE,
    detail: str = "",
) -> DialogueState:
    return DialogueState(
        dialogue_id="dlg-1",
        round=round_,
        history=history,
        questions=questions,
        candidates=cands or [],
        done=done,
        status=status,
        detail=detail,
    )


def test_prints_a_whole_dialogue_in_order_once(
    printer: tuple[DialoguePrinter, list[str]],
) -> None:
    node, out = printer
    d0, q, a = "A red bank on a corner.", "Is there a bakery?", "Yes."
    asking = _state(0, [d0], [], _cands(0.9, 0.8, 0.7, 0.1))
    for msg in (
        _state(0, [d0], []),
        asking,
        asking,  # re-sent by the manager's timer: nothing new to print
        _state(0, [d0], [q], _cands(0.9, 0.8, 0.7, 0.1)),
        _state(
            1,
            [d0, a],
            [q],
            _cands(0.95, 0.6),
            done=True,
            status=DialogueState.STATUS_CONFIDENT,
            detail="belief 0.99 >= 0.9",
        ),
    ):
        node.on_state(msg)
    loc = Localization(dialogue_id="dlg-1", place_id="Town:0", confidence=0.99, confident=True)
    loc.rounds_used = 1
    loc.fix.latitude, loc.fix.longitude = 48.137154, 11.576124
    node.on_localization(loc)
    text = "".join(out)
    print(text)
    lines = [line for line in text.splitlines() if line.strip()]
    assert "\x1b[" not in text  # color=False: plain text for logs
    order = [d0, "Round 0 candidates", q, a, "Round 1 candidates", "Done", "Localized"]
    positions = [next(i for i, line in enumerate(lines) if s in line) for s in order]
    assert positions == sorted(positions), lines
    assert sum(d0 in line for line in lines) == 1
    assert sum("Round 0 candidates" in line for line in lines) == 1
    # top 3 of round 0, each with its belief (softmax(score / 0.05)), not the 4th
    round0 = lines[positions[1] + 1 : positions[1] + 4]
    assert [line.split()[2] for line in round0] == ["Town:0", "Town:1", "Town:2"]
    assert "confidence 0.87" in round0[0] and "confidence 0.12" in round0[1]
    assert not any("Town:3" in line for line in lines)
    assert "lat 48.137154, lon 11.576124" in lines[-1]
    assert "confidence 0.99" in lines[-1]


def test_failure_prints_the_detail(printer: tuple[DialoguePrinter, list[str]]) -> None:
    node, out = printer
    node.on_state(_state(0, ["somewhere [odd] text"], []))
    node.on_state(
        _state(
            0,
            ["somewhere [odd] text"],
            [],
            done=True,
            status=DialogueState.STATUS_FAILED,
            detail="no candidates from the retrieval node for round 0 after 4 tries of 1 s",
        )
    )
    text = "".join(out)
    assert "somewhere [odd] text" in text  # rich markup in what people say is escaped
    assert "Failed: no candidates from the retrieval node for round 0" in text
    node.on_state(_state(0, ["somewhere [odd] text"], [], done=True))
    assert "".join(out) == text  # a finished dialogue prints nothing more


def test_refusals_print_and_memory_stays_bounded(
    printer: tuple[DialoguePrinter, list[str]],
) -> None:
    """A refused description has no dialogue id: each refusal is printed (not remembered as
    one dialogue "" that is done), and a console running for weeks remembers a bounded
    number of dialogues."""
    from dlgpr_ros.console_node import SHOWN_DIALOGUES

    node, out = printer
    for i in range(2):
        node.on_state(
            DialogueState(
                dialogue_id="",
                request_id=f"r{i}",
                status=DialogueState.STATUS_FAILED,
                done=True,
                detail=f"refused: too many ({i})",
            )
        )
    assert out == ["Refused: refused: too many (0)\n", "Refused: refused: too many (1)\n"]
    for i in range(SHOWN_DIALOGUES + 5):
        node.on_state(DialogueState(dialogue_id=f"dlg-{i}", history=[f"Place {i}."]))
    assert len(node._shown) == SHOWN_DIALOGUES and "dlg-0" not in node._shown
