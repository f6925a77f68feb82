"""Searching a map: images by embedding similarity, places by their best image.

The exact index answers unless the caller names an approximate one. A text query to a map
built with a `FineEncoder` (CMPL), with that encoder, re-ranks the FAISS top-N with the
fine features stored in SQLite, so no image is read or encoded at query time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from dlgpr_core.encoders.base import Encoder, FineEncoder, l2_normalise
from dlgpr_core.mapdb.approximate import ApproxIndexes
from dlgpr_core.mapdb.directory import BUILD_HINT, MapDirectory
from dlgpr_core.mapdb.errors import MapError
from dlgpr_core.mapdb.index import APPROX_KINDS, ApproxKind, faiss_module
from dlgpr_core.mapdb.report import ImageHit, PlaceHit
from dlgpr_core.mapdb.store import ImageRow
from dlgpr_core.mapdb.vectors import MapVectors

Query = str | np.ndarray | Image.Image

Ranking = list[tuple[float, int]]
"""(score, image id), best first."""

TEXT_CACHE_SIZE = 256
"""Query texts whose embeddings a map keeps (per encoder): the robot's search asks the map
for the same text once per channel, an evaluation once per channel combination, and a
re-sent retrieval request repeats its text; each encode costs a text-tower forward."""


class MapSearch:
    """Queries against one open map; every public call holds the map's lock."""

    def __init__(self, map_dir: MapDirectory, vectors: MapVectors, approx: ApproxIndexes) -> None:
        self.map = map_dir
        self.vectors = vectors
        self.approx = approx
        self._texts: OrderedDict[tuple[str, str, str], tuple[np.ndarray, ...]] = OrderedDict()

    def search_images(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | None = None,
    ) -> list[ImageHit]:
        """Top-``k`` images. ``query``: text or image (needs ``encoder``) or an embedding.

        ``approximate`` ("ivf"/"hnsw") searches that index instead of the exact one; it
        must have been built (`ApproxIndexes.build`) since the last map build.
        """
        with self.map.lock:
            vec = self._query_vector(query, encoder)
            found = self._raw_search(vec, k, approximate)
            rows = self.map.store.rows_by_ids([i for _, i in found])
            hits: list[ImageHit] = []
            for score, image_id in found:
                row = rows.get(image_id)
                if row is None:  # an id a concurrent build has not committed yet
                    continue
                hits.append(
                    ImageHit(
                        rank=len(hits) + 1,
                        score=score,
                        image_id=image_id,
                        path=row.path,
                        place_id=row.place_id,
                        lat=row.lat,
                        lon=row.lon,
                        heading=row.heading,
                        date=row.date,
                        city=row.city,
                        image_root=row.root,
                    )
                )
            return hits

    def search(
        self,
        query: Query,
        encoder: Encoder | None = None,
        k: int = 5,
        *,
        approximate: ApproxKind | None = None,
        rerank_top: int = 50,
    ) -> list[PlaceHit]:
        """Top-``k`` places, each scored by its best image.

        Searches ever more images (x4 each round) until ``k`` distinct places appear or
        the whole map has been ranked, because one place can own many top images.

        A text query to a map with fine features, with its FineEncoder, re-ranks the
        ``rerank_top`` best images by global cosine + fine score (from the stored features:
        no image is read or encoded); those stay ahead of the rest, which keep cosine order.
        """
        with self.map.lock:
            if (
                isinstance(query, str)
                and isinstance(encoder, FineEncoder)
                and self.map.fine_shape is not None
                and rerank_top > 0
            ):
                return self._search_fine(query, encoder, k, approximate, rerank_top)
            vec = self._query_vector(query, encoder)
            return self._top_places(vec, k, approximate, max(4 * k, 32))

    def _text_vector(self, text: str, encoder: Encoder) -> np.ndarray:
        """The encoder's embedding of `text` (1 x dim), through the text cache."""
        (vec,) = self._encoded("global", text, encoder, lambda: (encoder.encode_texts([text]),))
        return vec

    def _encoded(
        self,
        kind: str,
        text: str,
        encoder: Encoder,
        encode: Callable[[], tuple[np.ndarray, ...]],
    ) -> tuple[np.ndarray, ...]:
        """`encode()`'s arrays for `text`, from an LRU cache of recent texts per encoder and
        kind (`TEXT_CACHE_SIZE`); callers get copies, so the cache cannot be changed."""
        key = (kind, encoder.fingerprint, text)
        cached = self._texts.get(key)
        if cached is None:
            cached = tuple(np.array(a, copy=True) for a in encode())
            self._texts[key] = cached
            if len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        else:
            self._texts.move_to_end(key)
        return tuple(a.copy() for a in cached)

    def _query_vector(self, query: Query, encoder: Encoder | None) -> np.ndarray:
        """One L2-normalised row of the map's dimension, from whatever the caller passed."""
        dim, fingerprint = self.map.dim, self.map.encoder_fingerprint
        if encoder is not None:
            self.map.check_encoder(encoder)
        if isinstance(query, str | Image.Image) and encoder is None:
            raise MapError(
                f"a text or image query needs an encoder; pass the one the map was built "
                f"with ({fingerprint})"
            )
        if isinstance(query, str):
            assert encoder is not None
            vec = self._text_vector(query, encoder)
        elif isinstance(query, Image.Image):
            assert encoder is not None
            vec = encoder.encode_images([query.convert("RGB")])
        else:
            vec = np.asarray(query, dtype=np.float32)
            if vec.ndim == 1:
                vec = vec[None, :]
            if vec.ndim != 2 or vec.shape[0] != 1 or vec.shape[1] != dim:
                raise MapError(
                    f"query embedding has shape {tuple(np.shape(query))}, map "
                    f"{self.map.directory} needs one {dim}-dim vector; embed the query with "
                    f"the map's encoder ({fingerprint})"
                )
        return l2_normalise(np.asarray(vec, dtype=np.float32).reshape(1, dim))

    def _raw_search(self, vec: np.ndarray, k: int, approximate: ApproxKind | None) -> Ranking:
        """The FAISS top-``k``; refuses an empty map or one whose vectors were lost."""
        exact = self.vectors.exact
        if exact.ntotal == 0:
            stored = self.map.store.count("images")
            if stored:
                raise MapError(
                    f"map {self.map.directory} has {stored} images but none is indexed; "
                    f"run `{BUILD_HINT}` again to re-encode them"
                )
            raise MapError(f"map {self.map.directory} has no images; build it with `{BUILD_HINT}`")
        k = max(1, min(k, exact.ntotal))
        if approximate is None:
            scores, ids = exact.search(vec, k)
        elif approximate in APPROX_KINDS:
            approx = self.approx.load(approximate)
            inner = getattr(approx, "index", None)
            hnsw = getattr(faiss_module().downcast_index(inner), "hnsw", None) if inner else None
            if hnsw is not None and hnsw.efSearch < k:
                hnsw.efSearch = k
            scores, ids = approx.search(vec, k)
        else:
            raise MapError(f"unknown approximate index {approximate!r}; choose ivf or hnsw")
        return [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def _top_places(
        self,
        vec: np.ndarray,
        k: int,
        approximate: ApproxKind | None,
        first_n: int,
        reorder: Callable[[Ranking], Ranking] | None = None,
    ) -> list[PlaceHit]:
        """Places ranked by their first image in the (optionally re-ordered) image ranking,
        searching x4 more images each round until ``k`` distinct places appear or the whole
        map is ranked, because one place can own many top images."""
        total = self.vectors.exact.ntotal
        n = min(total, first_n) if total else 1
        while True:
            found = self._raw_search(vec, n, approximate)
            ordered = reorder(found) if reorder else found
            rows = self.map.store.rows_by_ids([i for _, i in ordered])
            best: dict[str, tuple[float, int]] = {}
            for score, image_id in ordered:
                row = rows.get(image_id)
                if row is not None and row.place_id not in best:
                    best[row.place_id] = (score, image_id)
            if len(best) >= k or n >= total:
                return self._place_hits(list(best.items())[:k], rows)
            n = min(total, n * 4)

    def _place_hits(
        self, ranked: Sequence[tuple[str, tuple[float, int]]], rows: dict[int, ImageRow]
    ) -> list[PlaceHit]:
        coords = self.map.store.place_coords([p for p, _ in ranked])
        return [
            PlaceHit(
                rank=rank,
                score=score,
                place_id=place_id,
                lat=coords[place_id][0],
                lon=coords[place_id][1],
                image_path=rows[image_id].path,
                image_id=image_id,
                city=rows[image_id].city,
                image_root=rows[image_id].root,
            )
            for rank, (place_id, (score, image_id)) in enumerate(ranked, start=1)
        ]

    def _search_fine(
        self,
        text: str,
        encoder: FineEncoder,
        k: int,
        approximate: ApproxKind | None,
        rerank_top: int,
    ) -> list[PlaceHit]:
        """`search` with fine re-ranking; places rank by their first image in the re-ranked
        list, as `encoders.evaluate.place_recall_from_embeddings` counts them."""
        self.map.check_encoder(encoder)
        glob, tfine = self._encoded(
            "fine", text, encoder, lambda: tuple(encoder.encode_texts_with_fine([text]))
        )
        vec = l2_normalise(np.asarray(glob, dtype=np.float32).reshape(1, self.map.dim))
        reranked: Ranking = []

        def reorder(found: Ranking) -> Ranking:
            if not reranked:  # the top-N is the same in every round: score it once
                reranked.extend(self._rerank(found[:rerank_top], tfine[0], encoder))
            done = {i for _, i in reranked}
            return reranked + [(s, i) for s, i in found if i not in done]

        return self._top_places(vec, k, approximate, max(4 * k, 32, rerank_top), reorder)

    def _rerank(self, found: Ranking, text_fine: np.ndarray, encoder: FineEncoder) -> Ranking:
        """Global + fine score of the images that have stored fine features, best first;
        an image without them (a concurrent build's) keeps its place among the rest."""
        shape = self.map.fine_shape
        assert shape is not None
        blobs = self.map.store.fine_by_ids([i for _, i in found])
        have = [(s, i) for s, i in found if i in blobs]
        if not have:
            return []
        fine = np.stack([np.frombuffer(blobs[i], dtype=np.float16).reshape(shape) for _, i in have])
        scores = np.asarray([s for s, _ in have], np.float32) + encoder.fine_scores(text_fine, fine)
        order = np.argsort(-scores, kind="stable")
        return [(float(scores[j]), have[j][1]) for j in order]
