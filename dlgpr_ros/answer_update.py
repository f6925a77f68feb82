"""How the dialogue manager re-ranks with the answers, from its `update` parameter.

'text' is the paper's update (answers only extend the query); 'facts' also applies the
fact-consistency update over the map's annotations. Reading annotations is ground truth on
the robot side: it is listed as an explicit, temporary exception in the import-linter
contract until the update reads image-derived evidence instead (issue #11).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dlgpr_core.dialogue.session import Reranker


def answer_update(params: Mapping[str, Any], temperature: float) -> Reranker | None:
    """The reranker for ``params["update"]``; fails at start-up on an unknown mode or a map
    without annotations: a robot silently falling back to the text update would be
    localising differently than configured."""
    mode = str(params["update"])
    if mode == "text":
        return None
    if mode != "facts":
        raise ValueError(f"update must be 'text' or 'facts', got {mode!r}")
    from dlgpr_core.dialogue.consistency import FactConsistencyReranker
    from dlgpr_core.mapdb.access import DEFAULT_MAP
    from dlgpr_core.mapdb.ground_truth import map_annotations

    places = map_annotations(str(params["map_path"]) or DEFAULT_MAP, str(params["annotations"]))
    if not places:
        raise ValueError("update=facts needs annotated places, the map has none")
    # the belief temperature, so that a contradiction costs exactly a factor epsilon
    return FactConsistencyReranker(
        places, epsilon=float(params["epsilon"]), temperature=temperature
    )
