"""How the dialogue manager re-ranks with the answers, from its `update` parameter.

'text' is the paper's update (answers only extend the query); 'evidence' also multiplies
each candidate's belief by the answer's likelihood under the candidate's image evidence in
the map (`dlgpr_core.dialogue.evidence_update`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlgpr_core.dialogue.session import Reranker


def answer_update(params: Mapping[str, Any], temperature: float) -> Reranker | None:
    """The reranker for ``params["update"]``; fails at start-up on an unknown mode or a map
    without that evidence: a robot silently falling back to the text update would be
    localising differently than configured."""
    mode = str(params["update"])
    if mode == "text":
        return None
    if mode != "evidence":
        raise ValueError(f"update must be 'text' or 'evidence', got {mode!r}")
    from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
    from dlgpr_core.evidence.knowledge import EvidenceSource
    from dlgpr_core.mapdb.access import DEFAULT_MAP
    from dlgpr_core.mapdb.database import MapDatabase

    annotator = str(params["evidence"])
    db = MapDatabase.open(Path(str(params["map_path"]) or DEFAULT_MAP))
    if not any(r.annotator == annotator and r.images for r in db.evidence.runs()):
        db.close()
        raise ValueError(
            f"update=evidence needs {annotator!r} evidence in the map; run `dlgpr map evidence "
            f"--map {params['map_path'] or DEFAULT_MAP} --annotator {annotator}`"
        )
    # the belief temperature, so that the update is exactly Bayes' rule on the belief
    return EvidenceUpdate(EvidenceSource.of_map(db.evidence, annotator), temperature=temperature)
