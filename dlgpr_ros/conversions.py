"""dlgpr_core results -> dlgpr_ros messages, in one place for every node.

The nodes stay thin wrappers: they call dlgpr_core and publish what these functions
build, so the message layout is decided here and tested once.
"""

from __future__ import annotations

from collections.abc import Sequence

from builtin_interfaces.msg import Time
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from dlgpr_core.mapdb.report import PlaceHit
from dlgpr_ros.msg import CandidateList, CandidatePlace

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
