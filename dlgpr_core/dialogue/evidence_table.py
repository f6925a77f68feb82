"""The candidates' evidence as arrays over the robot's ontology, for planning questions fast.

Information gain over a few hundred candidates and every probe the ontology allows is
(candidates x probes x answers) numbers per question; looping over dictionaries in Python
costs hundreds of milliseconds, numpy over one dense table a few. Each place becomes one row:
P(category there) per category (the evidence's P(some view shows it) through
`AnswerModel.there`, as the answer model reads a single place) and, per (category,
attribute), P(value | visible) over the slot's values, filled exactly as the answer model
fills what an annotator left out (`AnswerModel.value_distribution`), so planning and the
answer update use the same numbers.
Rows are cached per place (evidence does not change during a dialogue, and candidates recur
across rounds and dialogues), least recently used first out, so memory stays bounded on a
city-sized map. The questioner and the answer update of one dialogue read the same
candidates, so they share one table per evidence source and answer model (`shared_table`):
each row is computed once in a process, not once per reader.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.questions import attribute_question
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.slots import STREET, slots


@dataclass(frozen=True)
class Layout:
    """Where each category and each (category, attribute, value) sits in a row."""

    categories: tuple[str, ...]
    """Visible categories (the street is always there, so it has no presence column)."""
    pairs: tuple[tuple[str, str, tuple[str, ...]], ...]
    """(category, attribute, its values) for every attribute of every slot, street included."""
    offsets: tuple[int, ...]
    """Column of each pair's first value in the values block."""
    width: int

    @staticmethod
    @cache
    def of_ontology() -> Layout:
        cats = tuple(c for c in slots() if c != STREET)
        pairs = tuple(
            (c, a, tuple(vals))
            for c, slot in slots().items()
            for a, vals in slot.attributes.items()
            if vals
        )
        offsets, off = [], 0
        for _, _, vals in pairs:
            offsets.append(off)
            off += len(vals)
        return Layout(cats, pairs, tuple(offsets), off)

    def category_column(self, category: str) -> int | None:
        return _category_columns(self).get(category)

    def block(self, category: str, attribute: str) -> tuple[int, tuple[str, ...]] | None:
        """(first column, value names) of an attribute's values block; None if unknown."""
        return _blocks(self).get((category, attribute))


@cache
def _category_columns(layout: Layout) -> dict[str, int]:
    return {c: i for i, c in enumerate(layout.categories)}


@cache
def _blocks(layout: Layout) -> dict[tuple[str, str], tuple[int, tuple[str, ...]]]:
    return {
        (c, a): (off, vals) for (c, a, vals), off in zip(layout.pairs, layout.offsets, strict=True)
    }


@dataclass(frozen=True)
class Rows:
    """The evidence of some places, one row each, in the order asked for."""

    layout: Layout

    presence: np.ndarray
    """(n, categories) P(there) (`AnswerModel.there` of P(some view shows it))."""
    values: np.ndarray
    """(n, layout.width) P(value | visible), each pair's block summing to 1."""
    known: np.ndarray
    """(n,) bool: the place has evidence at all (without, every answer is uninformative)."""

    @staticmethod
    def stack(layout: Layout, rows: Sequence[tuple[np.ndarray, np.ndarray, bool]]) -> Rows:
        """The table of `EvidenceTable.row` results, in their order (none: zero rows)."""
        if not rows:
            return Rows(
                layout,
                np.zeros((0, len(layout.categories))),
                np.zeros((0, layout.width)),
                np.zeros(0, bool),
            )
        return Rows(
            layout,
            np.stack([r[0] for r in rows]),
            np.stack([r[1] for r in rows]),
            np.fromiter((r[2] for r in rows), dtype=bool, count=len(rows)),
        )

    def there(self, category: str) -> np.ndarray:
        """(n,) P(category there) per place; the street is always there."""
        if category == STREET:
            return np.ones(len(self.known))
        col = self.layout.category_column(category)
        return self.presence[:, col] if col is not None else np.zeros(len(self.known))

    def block(self, category: str, attribute: str) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """(n, V) P(value | visible) of one attribute and the value names; None if unknown."""
        found = self.layout.block(category, attribute)
        if found is None:
            return None
        off, names = found
        return self.values[:, off : off + len(names)], names


class EvidenceTable:
    """Dense evidence rows by place id, from an `EvidenceSource`; see the module docstring."""

    def __init__(
        self,
        source: EvidenceSource,
        model: AnswerModel,
        layout: Layout | None = None,
        max_cached: int = 50_000,
    ) -> None:
        self.source = source
        self.model = model
        self.layout = layout or Layout.of_ontology()
        self.max_cached = max_cached
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def row(self, ev: PlaceEvidence | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """One place's (presence, values, known) row."""
        lay = self.layout
        presence = np.zeros(len(lay.categories), dtype=np.float64)
        values = np.zeros(lay.width, dtype=np.float64)
        if ev is None:
            for (_, _, vals), off in zip(lay.pairs, lay.offsets, strict=True):
                values[off : off + len(vals)] = 1.0 / len(vals)
            return presence, values, False
        for col, c in enumerate(lay.categories):
            presence[col] = self.model.there(c, ev.p(c))
        for (c, a, vals), off in zip(lay.pairs, lay.offsets, strict=True):
            dist = self.model.value_distribution(ev, attribute_question(c, a))
            block = np.array([dist.get(v, 0.0) for v in vals], dtype=np.float64)
            total = block.sum()
            values[off : off + len(vals)] = block / total if total > 0 else 1.0 / len(vals)
        return presence, values, True

    def rows(self, place_ids: Sequence[str]) -> Rows:
        """The rows of `place_ids`, in their order (a shared table may be read from two
        threads, e.g. nodes of one process, so the cache is updated under a lock)."""
        with self._lock:
            missing = [p for p in dict.fromkeys(place_ids) if p not in self._cache]
            if missing:
                for pid, ev in zip(missing, self.source.get_many(missing), strict=True):
                    self._cache[pid] = self.row(ev)
            got = []
            for pid in place_ids:
                self._cache.move_to_end(pid)
                got.append(self._cache[pid])
            while len(self._cache) > max(self.max_cached, len(place_ids)):
                self._cache.popitem(last=False)
        return Rows.stack(self.layout, got)


_SHARED: weakref.WeakKeyDictionary[EvidenceSource, list[EvidenceTable]] = (
    weakref.WeakKeyDictionary()
)
_SHARED_LOCK = threading.Lock()


def shared_table(source: EvidenceSource, model: AnswerModel) -> EvidenceTable:
    """The one `EvidenceTable` of `source` under `model` (an equal model shares it) in this
    process; it lives as long as the source does."""
    with _SHARED_LOCK:
        tables = _SHARED.setdefault(source, [])
        for table in tables:
            if table.model == model:
                return table
        table = EvidenceTable(source, model)
        tables.append(table)
        return table
