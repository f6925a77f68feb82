"""dlgpr_core results <-> dlgpr_ros messages, in one place for every node.

The nodes stay thin wrappers: they call dlgpr_core and publish what these functions
build, so the message layout is decided here and tested once. The reverse direction
(message -> core state) exists because the questioner node is stateless: it rebuilds the
dialogue from each DialogueState message, so a restarted questioner asks exactly what a
never-restarted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from builtin_interfaces.msg import Time
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from dlgpr_core.dialogue.engine import DialogueConfig, observe_ranking
from dlgpr_core.dialogue.engine import DialogueState as CoreDialogueState
from dlgpr_core.dialogue.parse import parse_question
from dlgpr_core.dialogue.questions import Question as CoreQuestion
from dlgpr_core.dialogue.questions import free_question
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_ros.msg import (
    CandidateList,
    CandidatePlace,
    DialogueState,
    Localization,
    Question,
    RetrievalRequest,
    Utterance,
)

MAP_FRAME = "map"


def header(stamp: Time, frame_id: str = MAP_FRAME) -> Header:
    return Header(stamp=stamp, frame_id=frame_id)


def candidate(hit: PlaceHit) -> CandidatePlace:
    """The image path stays relative to its data set root, which differs per machine."""
    return CandidatePlace(
        place_id=hit.place_id,
        score=float(hit.score),
        rank=int(hit.rank),
        latitude=float(hit.lat),
        longitude=float(hit.lon),
        image_uri=hit.image_path,
    )


def candidate_list(
    hits: Sequence[PlaceHit],
    *,
    dialogue_id: str,
    round_: int,
    query_text: str,
    encoder: str,
    stamp: Time,
) -> CandidateList:
    return CandidateList(
        header=header(stamp),
        dialogue_id=dialogue_id,
        round=round_,
        query_text=query_text,
        encoder=encoder,
        candidates=[candidate(h) for h in hits],
    )


def navsatfix(lat: float | None, lon: float | None, stamp: Time) -> NavSatFix:
    """A place position as a GNSS-style fix; `STATUS_NO_FIX` when no place is known yet.

    The place position is the mean of its images' capture positions, not a measurement,
    so the covariance is reported as unknown rather than invented.
    """
    fix = NavSatFix(header=header(stamp))
    fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
    if lat is None or lon is None:
        fix.status.status = NavSatStatus.STATUS_NO_FIX
        return fix
    fix.status.status = NavSatStatus.STATUS_FIX
    fix.latitude = float(lat)
    fix.longitude = float(lon)
    return fix


def hit(c: CandidatePlace) -> PlaceHit:
    """A candidate back as a core hit. The image id and data set root do not travel (no
    questioner needs them), so they are left empty rather than guessed."""
    return PlaceHit(
        rank=int(c.rank),
        score=float(c.score),
        place_id=c.place_id,
        lat=float(c.latitude),
        lon=float(c.longitude),
        image_path=c.image_uri,
        image_id=-1,
        city=c.place_id.split(":", 1)[0],
        image_root="",
    )


def core_question(text: str) -> CoreQuestion:
    """A question as the questioners compare them: the structured probe when the text is one
    of the built-in phrasings (so its key matches a probe the questioner would ask again),
    otherwise a free question whose key is its normalised text."""
    parsed = parse_question(text)
    if parsed is None:
        return free_question(text)
    return replace(parsed.question, text=text)


def core_state(msg: DialogueState, config: DialogueConfig) -> CoreDialogueState:
    """The undecided core state of the round `msg` reports (see the module docstring)."""
    if not msg.history:
        raise ValueError(f"dialogue {msg.dialogue_id!r} has no initial description")
    return observe_ranking(
        config,
        msg.dialogue_id,
        int(msg.round),
        msg.history[0],
        tuple(msg.history[1:]),
        tuple(core_question(t) for t in msg.questions),
        tuple(hit(c) for c in msg.candidates),
    )


def retrieval_request(
    *, dialogue_id: str, round_: int, query_text: str, k: int, stamp: Time
) -> RetrievalRequest:
    return RetrievalRequest(
        header=header(stamp), dialogue_id=dialogue_id, round=round_, query_text=query_text, k=k
    )


def dialogue_state(
    *,
    dialogue_id: str,
    round_: int,
    status: int,
    detail: str,
    history: Sequence[str],
    questions: Sequence[str],
    candidates: Sequence[CandidatePlace],
    confidence: float,
    stamp: Time,
) -> DialogueState:
    """`done` follows from the status, so the two can never disagree; the position is the
    best candidate's, or NO_FIX while nothing has been retrieved."""
    best = candidates[0] if candidates else None
    return DialogueState(
        header=header(stamp),
        dialogue_id=dialogue_id,
        round=round_,
        status=status,
        done=status != DialogueState.STATUS_ACTIVE,
        detail=detail,
        history=list(history),
        questions=list(questions),
        last_question=questions[-1] if questions else "",
        candidates=list(candidates),
        best_place_id=best.place_id if best else "",
        confidence=float(confidence),
        position=navsatfix(
            best.latitude if best else None, best.longitude if best else None, stamp
        ),
    )


def localization(state: DialogueState, stamp: Time) -> Localization:
    """The final result of a finished dialogue, taken from its last state."""
    return Localization(
        header=header(stamp),
        dialogue_id=state.dialogue_id,
        rounds_used=state.round,
        place_id=state.best_place_id,
        confidence=state.confidence,
        confident=state.status == DialogueState.STATUS_CONFIDENT,
        fix=state.position,
    )


def question(
    q: CoreQuestion, *, dialogue_id: str, round_: int, questioner: str, stamp: Time
) -> Question:
    return Question(
        header=header(stamp),
        dialogue_id=dialogue_id,
        round=round_,
        text=q.text,
        reasoning=q.reasoning,
        questioner=questioner,
        fallback=q.fallback,
    )


def utterance(
    text: str,
    *,
    dialogue_id: str = "",
    round_: int = 0,
    source: int = Utterance.SOURCE_TYPED,
    confidence: float = 1.0,
    language: str = "en",
    stamp: Time,
) -> Utterance:
    return Utterance(
        header=header(stamp),
        dialogue_id=dialogue_id,
        round=round_,
        text=text,
        source=source,
        confidence=confidence,
        language=language,
    )
