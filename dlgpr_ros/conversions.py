"""dlgpr_core results <-> dlgpr_ros messages, in one place for every node.

The nodes stay thin wrappers: they call dlgpr_core and publish what these functions
build, so the message layout is decided here and tested once. Conversions are lossless
where a receiver needs the value: a question travels with its structured probe, a state with
every candidate's belief and the question awaiting an answer, so the stateless questioner
node rebuilds exactly the core state the dialogue manager holds (`core_state`) and asks what
an in-process engine would, restarted or not.
"""

from __future__ import annotations

from collections.abc import Sequence

from builtin_interfaces.msg import Time
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from dlgpr_core.dialogue.questions import Question as CoreQuestion
from dlgpr_core.dialogue.session import RequestRetrieval
from dlgpr_core.dialogue.sessions import Reject
from dlgpr_core.dialogue.state import PHASES, Status
from dlgpr_core.dialogue.state import DialogueState as CoreDialogueState
from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_ros.msg import (
    CandidateList,
    CandidatePlace,
    DialogueState,
    Localization,
    Probe,
    Question,
    RetrievalRequest,
    Utterance,
)

MAP_FRAME = "map"
PHASE_CODE = {name: code for code, name in enumerate(PHASES)}
"""Core phase -> DialogueState.PHASE_* (the message constants follow `PHASES`' order)."""


def header(stamp: Time, frame_id: str = MAP_FRAME) -> Header:
    return Header(stamp=stamp, frame_id=frame_id)


# --- places ----------------------------------------------------------------------------------


def candidate(hit: PlaceHit, belief: float = 0.0) -> CandidatePlace:
    """The image path stays relative to its data set root, which differs per machine."""
    return CandidatePlace(
        place_id=hit.place_id,
        score=float(hit.score),
        belief=float(belief),
        rank=int(hit.rank),
        latitude=float(hit.lat),
        longitude=float(hit.lon),
        image_uri=hit.image_path,
    )


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


# --- questions -------------------------------------------------------------------------------


def probe(q: CoreQuestion) -> Probe:
    """The structured probe of a question (empty strings for what it does not name)."""
    return Probe(kind=q.kind, category=q.category, attribute=q.attribute or "", value=q.value or "")


def core_question(text: str, p: Probe, reasoning: str = "", fallback: bool = False) -> CoreQuestion:
    """A question back from its text and probe, exactly as it was asked (no parsing)."""
    kind = p.kind or Probe.KIND_FREE
    if kind not in (Probe.KIND_PRESENCE, Probe.KIND_ATTRIBUTE, Probe.KIND_FREE):
        raise ValueError(f"unknown probe kind {p.kind!r} for question {text!r}")
    return CoreQuestion(
        text=text,
        kind=kind,
        category=p.category,
        attribute=p.attribute or None,
        value=p.value or None,
        reasoning=reasoning,
        fallback=fallback,
    )


def question_msg_to_core(msg: Question) -> CoreQuestion:
    return core_question(msg.text, msg.probe, msg.reasoning, msg.fallback)


def question(
    q: CoreQuestion | None, *, dialogue_id: str, round_: int, questioner: str, stamp: Time
) -> Question:
    """A question message; None (nothing left to ask) is an empty text."""
    if q is None:
        return Question(
            header=header(stamp), dialogue_id=dialogue_id, round=round_, questioner=questioner
        )
    return Question(
        header=header(stamp),
        dialogue_id=dialogue_id,
        round=round_,
        text=q.text,
        probe=probe(q),
        reasoning=q.reasoning,
        questioner=questioner,
        fallback=q.fallback,
    )


# --- dialogue state --------------------------------------------------------------------------


def dialogue_state(state: CoreDialogueState, stamp: Time) -> DialogueState:
    """The message of a core snapshot. `questions` lists the pending question too (answers
    follow in `history`); `done` follows from the status, so the two never disagree; the
    position is the best candidate's, or NO_FIX while nothing has been retrieved."""
    asked = [*state.questions, *([state.pending_question] if state.pending_question else [])]
    candidates = [candidate(h, b) for h, b in zip(state.candidates, state.belief, strict=False)]
    pending = question(
        state.pending_question,
        dialogue_id=state.dialogue_id,
        round_=state.round,
        questioner=state.asked_by if state.pending_question else "",
        stamp=stamp,
    )
    return _state_msg(
        state,
        stamp,
        status=int(state.status),
        detail=state.detail,
        asked=asked,
        candidates=candidates,
        pending=pending,
    )


def rejected_state(reject: Reject, stamp: Time) -> DialogueState:
    """A FAILED state naming the problem of a refused utterance; for a known dialogue it
    carries its history and questions (not its candidates: nothing was localised). A
    refused description has no dialogue id: its sender recognises it by `request_id`."""
    known = reject.known
    if known is None:
        return DialogueState(
            header=header(stamp),
            dialogue_id=reject.dialogue_id,
            request_id=reject.request_id,
            round=reject.round,
            status=DialogueState.STATUS_FAILED,
            phase=DialogueState.PHASE_DONE,
            done=True,
            detail=reject.problem,
            position=navsatfix(None, None, stamp),
        )
    empty = question(
        None, dialogue_id=known.dialogue_id, round_=known.round, questioner="", stamp=stamp
    )
    return _state_msg(
        known,
        stamp,
        status=DialogueState.STATUS_FAILED,
        detail=reject.problem,
        asked=list(known.questions),
        candidates=[],
        pending=empty,
    )


def _state_msg(
    state: CoreDialogueState,
    stamp: Time,
    *,
    status: int,
    detail: str,
    asked: Sequence[CoreQuestion],
    candidates: Sequence[CandidatePlace],
    pending: Question,
) -> DialogueState:
    best = candidates[0] if candidates else None
    return DialogueState(
        header=header(stamp),
        dialogue_id=state.dialogue_id,
        request_id=state.request_id,
        round=state.round,
        status=status,
        phase=PHASE_CODE[state.phase] if status == Status.ACTIVE else DialogueState.PHASE_DONE,
        done=status != Status.ACTIVE,
        detail=detail,
        history=list(state.history),
        questions=[q.text for q in asked],
        probes=[probe(q) for q in asked],
        last_question=asked[-1].text if asked else "",
        pending_question=pending,
        candidates=list(candidates),
        best_place_id=best.place_id if best else "",
        confidence=float(best.belief) if best else 0.0,
        position=navsatfix(
            best.latitude if best else None, best.longitude if best else None, stamp
        ),
    )


def core_state(msg: DialogueState) -> CoreDialogueState:
    """The core snapshot a state message describes (what the questioner node asks from):
    the answered questions with their probes, the candidates with their belief."""
    if not msg.history:
        raise ValueError(f"dialogue {msg.dialogue_id!r} has no initial description")
    if len(msg.probes) != len(msg.questions):
        raise ValueError(
            f"dialogue {msg.dialogue_id!r}: {len(msg.questions)} questions but "
            f"{len(msg.probes)} probes"
        )
    answers = tuple(msg.history[1:])
    asked = [core_question(t, p) for t, p in zip(msg.questions, msg.probes, strict=True)]
    pending = question_msg_to_core(msg.pending_question) if msg.pending_question.text else None
    return CoreDialogueState(
        dialogue_id=msg.dialogue_id,
        round=int(msg.round),
        d0=msg.history[0],
        answers=answers,
        questions=tuple(asked[: len(answers)]),
        ranking=tuple(hit(c) for c in msg.candidates),
        top_k=max(len(msg.candidates), 1),
        belief=tuple(float(c.belief) for c in msg.candidates),
        pending_question=pending,
        done=bool(msg.done),
        detail=msg.detail,
        request_id=msg.request_id,
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


# --- requests and utterances -----------------------------------------------------------------


def retrieval_request(request: RequestRetrieval, stamp: Time) -> RetrievalRequest:
    return RetrievalRequest(
        header=header(stamp),
        dialogue_id=request.dialogue_id,
        round=request.round,
        query_text=request.query,
        k=request.k,
    )


def utterance(
    text: str,
    *,
    dialogue_id: str = "",
    round_: int = 0,
    source: int = Utterance.SOURCE_TYPED,
    confidence: float = 1.0,
    language: str = "en",
    request_id: str = "",
    stamp: Time,
) -> Utterance:
    return Utterance(
        header=header(stamp),
        dialogue_id=dialogue_id,
        request_id=request_id,
        round=round_,
        text=text,
        source=source,
        confidence=confidence,
        language=language,
    )
