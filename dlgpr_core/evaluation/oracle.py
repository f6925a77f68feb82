"""Oracle rows of the evaluation: ground-truth evidence and a questioner that knows the target.

Both read the data set's annotations, which no robot has; they exist to measure the robot
against ceilings, and every table labels them "oracle":

- oracle evidence: each image's evidence is exactly what is in it (every element with a
  region in that view, with all its attributes, confidence 1), stored in the map under the
  annotator name "oracle", so the robot's own questioners and answer update run on it
  unchanged;
- the oracle questioner knows the target place and asks the question about the target's
  stated facts whose true answer leaves the target the highest belief after the update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dlgpr_core.data.annotations import PlaceAnnotation, ViewAnnotation
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.dialogue.answer_model import AnswerModel
from dlgpr_core.dialogue.answers import read_answer
from dlgpr_core.dialogue.questions import Question, attribute_question, presence_question
from dlgpr_core.dialogue.state import DialogueState
from dlgpr_core.evidence.knowledge import EvidenceSource, PlaceEvidence
from dlgpr_core.evidence.phrases import slot_phrase
from dlgpr_core.evidence.slots import PRESENCE, STREET, values
from dlgpr_core.mapdb.database import MapDatabase
from dlgpr_core.mapdb.evidence import EvidenceItem, ImageEvidence
from dlgpr_core.users.fact import FactUser

ORACLE = "oracle"
ORACLE_VERSION = "oracle-1"


def view_items(place: PlaceAnnotation, view: ViewAnnotation) -> list[EvidenceItem]:
    """What is really in one view: its elements' presence and attributes, the street's."""
    elements = {e.id: e for e in place.elements}
    # the value as people say it (a church's roof is "gabled with steeple"), where stated
    stated = {(f.element_id, f.attribute): f.value for f in place.facts}
    items: list[EvidenceItem] = []
    seen: set[str] = set()
    for region in view.regions:
        e = elements.get(region.element_id)
        if e is None or e.id in seen:
            continue
        seen.add(e.id)
        x0, y0, x1, y1 = region.bbox
        box = (x0, y0, x1, y1)
        items.append(
            EvidenceItem(
                slot_phrase(e.category, PRESENCE, e.category),
                1.0,
                e.category,
                PRESENCE,
                e.category,
                box,
            )
        )
        for attr, attribute_value in e.attributes.items():
            value = stated.get((e.id, attr), attribute_value)
            if value in values(e.category, attr):
                items.append(
                    EvidenceItem(
                        slot_phrase(e.category, attr, value), 1.0, e.category, attr, value, box
                    )
                )
    for e in place.elements:
        if e.category == STREET:
            for attr, value in e.attributes.items():
                if value in values(STREET, attr):
                    items.append(
                        EvidenceItem(slot_phrase(STREET, attr, value), 1.0, STREET, attr, value)
                    )
    return items


def oracle_place_evidence(place: PlaceAnnotation) -> PlaceEvidence:
    """The oracle's knowledge of one place, without a map (training data, tests)."""
    images = [ImageEvidence(i, v.image, view_items(place, v)) for i, v in enumerate(place.views)]
    return PlaceEvidence.from_images(images)


def oracle_source(places: Sequence[PlaceAnnotation]) -> EvidenceSource:
    """An `EvidenceSource` of oracle evidence straight from annotations."""
    by_id = {namespaced_place_id(p.city, p.place_id): p for p in places}

    def load(ids: Sequence[str]) -> dict[str, list[ImageEvidence]]:
        return {
            pid: [
                ImageEvidence(i, v.image, view_items(by_id[pid], v))
                for i, v in enumerate(by_id[pid].views)
            ]
            for pid in ids
            if pid in by_id
        }

    return EvidenceSource(load)


def write_oracle_evidence(db: MapDatabase, places: Sequence[PlaceAnnotation]) -> int:
    """Stores oracle evidence for every map image that belongs to an annotated view;
    returns the number of images written (already written ones are skipped)."""
    todo = set(db.evidence.todo(ORACLE, ORACLE_VERSION))
    by_path = {v.image: (p, v) for p in places for v in p.views}
    rows = db.image_rows(sorted(todo))
    results = [
        (image_id, view_items(*by_path[row.path]))
        for image_id, row in rows.items()
        if row.path in by_path
    ]
    db.put_evidence(ORACLE, ORACLE_VERSION, results)
    return len(results)


class OracleQuestioner:
    """Knows each dialogue's target; asks the target's most discriminating stated fact:
    the probe whose true answer gives the target the highest belief after the robot's own
    update (same `AnswerModel` and evidence the robot uses)."""

    name = "oracle"

    def __init__(
        self,
        evidence: EvidenceSource,
        targets: Mapping[str, PlaceAnnotation],
        top_k: int | None = None,
        answer_model: AnswerModel | None = None,
    ) -> None:
        self.evidence = evidence
        self.targets = dict(targets)
        self.top_k = top_k
        self.model = answer_model or AnswerModel.for_evidence(evidence)

    def _probes(self, place: PlaceAnnotation) -> list[Question]:
        category_of = {e.id: e.category for e in place.elements}
        out: dict[tuple[str, str, str | None, str | None], Question] = {}
        for f in place.facts:
            cat = category_of.get(f.element_id)
            if cat is None:
                continue
            q = (
                presence_question(cat)
                if f.attribute == PRESENCE
                else attribute_question(cat, f.attribute)
            )
            out.setdefault(q.key, q)
        return [out[k] for k in sorted(out, key=lambda x: tuple(str(p) for p in x))]

    def ask(self, state: DialogueState) -> Question | None:
        target = self.targets.get(state.dialogue_id)
        if target is None:
            raise KeyError(f"the oracle questioner does not know the target of {state.dialogue_id}")
        tid = namespaced_place_id(target.city, target.place_id)
        user = FactUser(target)
        ids = [h.place_id for h in state.candidates[: self.top_k or len(state.candidates)]]
        if tid not in ids:
            ids.append(tid)
        belief = list(state.belief[: len(ids)]) + [min(state.belief, default=1.0)] * (
            len(ids) - len(state.belief[: len(ids)])
        )
        evidence = self.evidence.get_many(ids)
        asked = {q.key for q in state.questions}
        best: tuple[float, Question] | None = None
        for q in self._probes(target):
            if q.key in asked:
                continue
            outcome = read_answer(q, user.answer(q))
            if outcome is None or outcome == ("unknown",):
                continue
            post = [
                b * (self.model.likelihood(ev, q, outcome) or 1.0)
                for ev, b in zip(evidence, belief, strict=True)
            ]
            share = post[ids.index(tid)] / sum(post) if sum(post) > 0 else 0.0
            if best is None or share > best[0] + 1e-12:
                best = (share, q)
        return None if best is None else best[1]
