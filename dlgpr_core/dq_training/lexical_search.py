"""A lexical stand-in retriever over place descriptions, so DQ-pilot data builds on a CPU."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.mapdb.report import PlaceHit


class LexicalSearch:
    """Deterministic TF-IDF cosine over place descriptions: a CPU stand-in retriever for
    tiny configs and tests where no trained map exists. Not the paper's retriever (CMPL);
    use `dlgpr_core.dialogue.engine.map_search` for real runs."""

    def __init__(self, places: Sequence[PlaceAnnotation], image_root: str | Path) -> None:
        self.places = list(places)
        self.image_root = str(image_root)
        docs = [_tokens(p.description) for p in self.places]
        df: Counter[str] = Counter()
        for d in docs:
            df.update(set(d))
        n = len(docs)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.vectors = [self._vector(d) for d in docs]

    def _vector(self, tokens: Sequence[str]) -> dict[str, float]:
        tf = Counter(tokens)
        vec = {w: c * self.idf.get(w, 0.0) for w, c in tf.items() if w in self.idf}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Dense unit TF-IDF rows over the description vocabulary (the curriculum's
        stand-in text encoder; all-zero for text with no known word)."""
        vocab = {w: i for i, w in enumerate(sorted(self.idf))}
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for row, text in enumerate(texts):
            for w, v in self._vector(_tokens(text)).items():
                out[row, vocab[w]] = v
        return out

    def __call__(self, text: str, k: int) -> list[PlaceHit]:
        q = self._vector(_tokens(text))
        scores = [sum(q.get(w, 0.0) * v for w, v in vec.items()) for vec in self.vectors]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        hits: list[PlaceHit] = []
        for rank, i in enumerate(order, start=1):
            p = self.places[i]
            image = p.views[0].image if p.views else ""
            hits.append(
                PlaceHit(
                    rank,
                    scores[i],
                    namespaced_place_id(p.city, p.place_id),
                    0.0,
                    0.0,
                    image,
                    i,
                    p.city,
                    self.image_root,
                )
            )
        return hits


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())
