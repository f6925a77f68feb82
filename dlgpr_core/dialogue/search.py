"""The robot's search: what a description finds in the map, through every channel it has.

Three channels, fused in score space (each place keeps the cosine scale, so the dialogue's
one temperature still means what it meant):

1. **dense**: the map's image-text encoder, each place scored by its best image;
2. **lexical**: BM25 over the words of each place's evidence phrases (names, colours), when
   the map records it (`MapDatabase.set_lexical`; `dlgpr map build` records the default);
3. **evidence**: the description read as observations ("a bank with a phone booth": both
   are there; "no trees"; "the bank is red") and each place re-scored by their likelihood
   under its image evidence (`EvidenceUpdate`): temperature x ln P(description | place).

In a dialogue the third channel is the session's answer update itself (it reads the
description and every answer in the context of its question), so a dialogue's round 0 is
exactly this search; `dlgpr map query` and the static evaluation call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
from dlgpr_core.dialogue.state import DEFAULT_TEMPERATURE
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.evidence.knowledge import EvidenceSource
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.index import ApproxKind
from dlgpr_core.mapdb.lexical import LexicalSpec
from dlgpr_core.mapdb.report import PlaceHit

CHANNELS = ("dense", "lexical", "evidence")


def check_channels(channels: Sequence[str]) -> None:
    """Refuses a channel list the search cannot run (callers check before loading a map)."""
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or "dense" not in channels:
        raise ValueError(f"channels must include 'dense' and come from {CHANNELS}: {channels}")


class RobotSearch:
    """Search a map with the chosen channels (`CHANNELS`); see the module docstring.

    ``lexical``: the spec of the lexical channel (None: the map's recorded setting, which may
    be off). ``pool``: places the dense search hands the other channels (the whole map up to
    that size), since a place the embedding ranks low may be exactly what the words say.
    """

    def __init__(
        self,
        db: MapDatabase,
        encoder: Encoder,
        evidence: EvidenceSource | None,
        *,
        channels: Sequence[str] = CHANNELS,
        lexical: LexicalSpec | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        pool: int = 1000,
        approximate: ApproxKind | None = None,
    ) -> None:
        check_channels(channels)
        if "evidence" in channels and evidence is None:
            raise ValueError("the evidence channel needs the map's evidence (EvidenceSource)")
        self.db = db
        self.encoder = encoder
        self.channels = tuple(channels)
        self.lexical = lexical if lexical is not None else db.lexical_spec()
        self.pool = pool
        self.approximate = approximate
        self.update = EvidenceUpdate(evidence, temperature) if evidence is not None else None

    def __call__(self, text: str, k: int) -> list[PlaceHit]:
        """The ``k`` best places for ``text``, ranked through every channel."""
        lexical = self.lexical if "lexical" in self.channels else None
        hits = self.db.search(
            text,
            self.encoder,
            k=max(k, self.pool),
            lexical=lexical,
            approximate=self.approximate,
        )
        if "evidence" in self.channels and self.update is not None:
            hits = self.update(hits, [], [], description=text)
        return hits[:k]
