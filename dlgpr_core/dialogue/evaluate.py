"""Simulated interactive benchmark: dialogues against a map, summarised as in the paper.

Ranks are taken over the whole map (search k = number of places), because BRI and
Recall@K are defined on the target's rank among all places, not within a short list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.engine import DialogueConfig, DialogueEngine, DialogueResult
from dlgpr_core.dialogue.metrics import bri, cumulative_recall_at_k
from dlgpr_core.dialogue.questioners import Questioner
from dlgpr_core.dialogue.user import FactUser
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.report import PlaceHit


def run_dialogues(
    map_db: MapDatabase,
    encoder: Encoder,
    places: Sequence[PlaceAnnotation],
    questioner: Questioner,
    config: DialogueConfig | None = None,
    n: int | None = None,
    seed: int = 0,
) -> list[DialogueResult]:
    """Simulate `n` dialogues (all places when None), each starting from a place's caption.

    The places are drawn without replacement by `seed`; the target is the place's
    namespaced id, as stored in maps built from SynthCities/DQ-Cities.
    """
    cfg = config or DialogueConfig()
    cfg = replace(cfg, search_k=max(cfg.search_k, map_db.info().n_places))

    def search(text: str, k: int) -> list[PlaceHit]:
        return map_db.search(text, encoder, k=k)

    engine = DialogueEngine(search, questioner, cfg)
    chosen = list(places)
    random.Random(seed).shuffle(chosen)
    if n is not None:
        chosen = chosen[:n]
    return [
        engine.run(
            p.caption,
            FactUser(p),
            namespaced_place_id(p.city, p.place_id),
            dialogue_id=f"{p.city}:{p.place_id}:{seed}",
        )
        for p in chosen
    ]


@dataclass(frozen=True)
class DialogueSummary:
    """Per-round cumulative Recall@K and BRI of a set of dialogues."""

    n_dialogues: int
    n_rounds: int
    recall: dict[int, list[float]]
    bri: float
    mean_questions: float


def summarise(
    results: Sequence[DialogueResult], max_rounds: int, ks: Sequence[int] = (1, 5, 10)
) -> DialogueSummary:
    """Recall@K per round 0..max_rounds and BRI; early-stopped dialogues keep their rank."""
    if not results:
        raise ValueError("no dialogues to summarise")
    ranks = np.array([r.padded_ranks(max_rounds + 1) for r in results], dtype=np.int64)
    recall = cumulative_recall_at_k(ranks, ks)
    return DialogueSummary(
        n_dialogues=len(results),
        n_rounds=max_rounds + 1,
        recall={k: [float(x) for x in v] for k, v in recall.items()},
        bri=bri(ranks),
        mean_questions=float(np.mean([len(r.final.questions) for r in results])),
    )
