"""The static layout of one place: sampling street archetypes and mutating them into places.

Places are derived from a small pool of archetypes on purpose: places of one archetype
share the elements their vague caption names and differ only in details (a colour, a
sign, one more bench), which is exactly the ambiguity a dialogue has to resolve.
All randomness comes from the numpy Generator passed in, so a seed fixes everything.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlgpr_core.synth import vocabulary as voc

FAR_SLOTS = (0.15, 0.5, 0.85)
NEAR_SLOTS = (0.25, 0.75)
MAX_PROPS = {2: 6, 3: 5, 4: 4}
"""Props per building count; keeps the description inside its 260-word limit."""


@dataclass
class SceneElement:
    """A static element. Props are positioned relative to a building so that the layout
    (and with it every relation) survives mutations that resize buildings."""

    id: str
    kind: str
    category: str
    attrs: dict[str, str]
    side: str
    """``far``, ``near`` or ``road``."""
    width: float
    """Metres along the street (per instance)."""
    anchor: str | None = None
    """The building a prop stands next to / across from; ``None`` spreads it over the block."""
    frac: float = 0.5
    """Position within the anchor building's width (0 = its left edge)."""
    count: int = 1
    """Instances of a grouped element (lamp posts)."""
    gap: float = 0.0
    """Buildings only: free space before the building (an alley)."""


@dataclass
class Scene:
    """One place's static content, independent of any view."""

    street: dict[str, str]
    elements: list[SceneElement] = field(default_factory=list)
    caption_ids: tuple[str, ...] = ()
    """Elements the ambiguous caption names; mutations keep their categories."""
    archetype: int = 0

    @property
    def buildings(self) -> list[SceneElement]:
        return [e for e in self.elements if e.kind == "building"]

    @property
    def props(self) -> list[SceneElement]:
        return [e for e in self.elements if e.kind != "building"]

    def get(self, element_id: str) -> SceneElement:
        for e in self.elements:
            if e.id == element_id:
                return e
        raise KeyError(element_id)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _new_id(scene: Scene) -> str:
    """Provisional ids (``e7``); `finalize` renames them once the layout is fixed."""
    used = [int(e.id[1:]) for e in scene.elements if e.id.startswith("e") and e.id[1:].isdigit()]
    return f"e{max(used, default=0) + 1}"


def _sample_building(rng: np.random.Generator, category: str, eid: str) -> SceneElement:
    bt = voc.BUILDINGS[category]
    material = _pick(rng, bt.materials)
    attrs = {
        "name": _pick(rng, bt.chains),
        "colour": _pick(rng, voc.MATERIAL_COLOURS[material]),
        "material": material,
        "floors": str(int(rng.integers(bt.floors[0], bt.floors[1] + 1))),
        "awning": _pick(rng, voc.AWNING_COLOURS) if rng.random() < bt.awning_p else "none",
        "roof": "gabled" if category == "church" else _pick(rng, voc.ROOFS),
        "door": _pick(rng, voc.DOOR_COLOURS),
    }
    width = float(np.round(rng.uniform(*bt.width), 1))
    gap = float(np.round(rng.uniform(0.0, 2.5), 1)) if rng.random() < 0.4 else 0.0
    return SceneElement(eid, "building", category, attrs, "far", width, gap=gap)


def _free_slots(scene: Scene, building_id: str, side: str) -> list[float]:
    slots = FAR_SLOTS if side == "far" else NEAR_SLOTS
    taken = {
        e.frac
        for e in scene.props
        if e.anchor == building_id and e.side == side and e.category not in ("hedge", "crosswalk")
    }
    return [s for s in slots if s not in taken]


def _add_furniture(
    rng: np.random.Generator, scene: Scene, building_id: str | None = None
) -> SceneElement | None:
    """Add one piece of street furniture in a free slot; ``None`` when nothing fits."""
    present = {e.category for e in scene.props}
    categories = [c for c in voc.FURNITURE if c not in present]
    if not categories:
        return None
    category = _pick(rng, categories)
    pt = voc.FURNITURE[category]
    side = _pick(rng, pt.sides)
    anchors = [building_id] if building_id else [b.id for b in scene.buildings]
    options = [(a, s) for a in anchors for s in _free_slots(scene, a, side)]
    if not options:
        return None
    anchor, frac = options[int(rng.integers(len(options)))]
    attrs = {k: _pick(rng, v) for k, v in pt.attributes.items()}
    el = SceneElement(_new_id(scene), pt.kind, category, attrs, side, pt.width, anchor, frac)
    scene.elements.append(el)
    return el


def _add_tree(rng: np.random.Generator, scene: Scene) -> SceneElement | None:
    options = [(b.id, s) for b in scene.buildings for s in _free_slots(scene, b.id, "far")]
    if not options or sum(1 for e in scene.props if e.category == "tree") >= 3:
        return None
    anchor, frac = options[int(rng.integers(len(options)))]
    attrs = {k: _pick(rng, v) for k, v in voc.TREE.attributes.items()}
    el = SceneElement(
        _new_id(scene), "vegetation", "tree", attrs, "far", voc.TREE.width, anchor, frac
    )
    scene.elements.append(el)
    return el


def _add_unique(rng: np.random.Generator, scene: Scene, category: str) -> SceneElement | None:
    """Hedge, crosswalk and lamp posts occur at most once per place."""
    if any(e.category == category for e in scene.props):
        return None
    anchor: str | None = _pick(rng, [b.id for b in scene.buildings])
    if category == "hedge":
        pt, side, count = voc.HEDGE, "far", 1
    elif category == "crosswalk":
        pt, side, count = voc.CROSSWALK, "road", 1
    else:
        pt, side, count, anchor = voc.LAMP_POST, "far", int(rng.integers(2, 5)), None
    attrs = {k: _pick(rng, v) for k, v in pt.attributes.items()}
    if category == "lamp post":
        attrs["count"] = str(count)
    el = SceneElement(_new_id(scene), pt.kind, category, attrs, side, pt.width, anchor, 0.5, count)
    scene.elements.append(el)
    return el


def _add_random_prop(rng: np.random.Generator, scene: Scene) -> SceneElement | None:
    r = rng.random()
    if r < 0.5:
        return _add_furniture(rng, scene)
    if r < 0.75:
        return _add_tree(rng, scene)
    return _add_unique(rng, scene, _pick(rng, ("hedge", "crosswalk", "lamp post")))


def prop_budget(scene: Scene) -> int:
    return MAX_PROPS[len(scene.buildings)]


def sample_archetype(rng: np.random.Generator, index: int) -> Scene:
    """A complete street; places are mutations of it."""
    n_buildings = int(rng.integers(2, 5))
    categories = rng.choice(sorted(voc.BUILDINGS), size=n_buildings, replace=False)
    scene = Scene(
        street={k: _pick(rng, v) for k, v in voc.STREET_ATTRIBUTES.items()}, archetype=index
    )
    for cat in categories:
        scene.elements.append(_sample_building(rng, str(cat), _new_id(scene)))
    anchor = _pick(rng, [b.id for b in scene.buildings])
    mode = rng.random()
    caption: tuple[str, ...] = (anchor,)
    if mode < 0.65:
        furn = _add_furniture(rng, scene, anchor)
        if furn is not None:
            caption = (anchor, furn.id)
    elif mode < 0.85:
        ids = [b.id for b in scene.buildings]
        i = ids.index(anchor)
        caption = (anchor, ids[i + 1] if i + 1 < len(ids) else ids[i - 1])
    scene.caption_ids = caption
    target = int(rng.integers(2, prop_budget(scene) + 1))
    for _ in range(20):
        if len(scene.props) >= target:
            break
        _add_random_prop(rng, scene)
    return scene


# --- mutations -------------------------------------------------------------------------------

Mutation = Callable[[np.random.Generator, Scene], bool]


def _m_building_attr(attr: str) -> Mutation:
    def mutate(rng: np.random.Generator, scene: Scene) -> bool:
        b = scene.buildings[int(rng.integers(len(scene.buildings)))]
        bt = voc.BUILDINGS[b.category]
        if attr == "colour":
            options = voc.MATERIAL_COLOURS[b.attrs["material"]]
        elif attr == "material":
            options = bt.materials
        elif attr == "floors":
            options = tuple(str(f) for f in range(bt.floors[0], bt.floors[1] + 1))
        elif attr == "awning":
            options = (*voc.AWNING_COLOURS, "none")
        elif attr == "name":
            options = bt.chains
        elif attr == "roof":
            options = ("gabled",) if b.category == "church" else voc.ROOFS
        else:
            options = voc.DOOR_COLOURS
        choices = [o for o in options if o != b.attrs[attr]]
        if not choices:
            return False
        b.attrs[attr] = _pick(rng, choices)
        if attr == "material":
            b.attrs["colour"] = _pick(rng, voc.MATERIAL_COLOURS[b.attrs["material"]])
        return True

    return mutate


def _m_recategorise(rng: np.random.Generator, scene: Scene) -> bool:
    """Turn a building the caption does not name into another kind of business."""
    free = [b for b in scene.buildings if b.id not in scene.caption_ids]
    if not free:
        return False
    b = free[int(rng.integers(len(free)))]
    present = {x.category for x in scene.buildings}
    category = _pick(rng, [c for c in sorted(voc.BUILDINGS) if c not in present])
    fresh = _sample_building(rng, category, b.id)
    b.category, b.attrs = fresh.category, fresh.attrs
    return True


def _m_add_prop(rng: np.random.Generator, scene: Scene) -> bool:
    if len(scene.props) >= prop_budget(scene):
        return False
    return _add_random_prop(rng, scene) is not None


def _m_remove_prop(rng: np.random.Generator, scene: Scene) -> bool:
    free = [e for e in scene.props if e.id not in scene.caption_ids]
    if len(scene.props) <= 2 or not free:
        return False
    scene.elements.remove(free[int(rng.integers(len(free)))])
    return True


def _m_prop_attr(rng: np.random.Generator, scene: Scene) -> bool:
    props = [e for e in scene.props if e.category != "lamp post" or len(e.attrs) > 1]
    if not props:
        return False
    e = props[int(rng.integers(len(props)))]
    spec = (
        voc.FURNITURE.get(e.category)
        or {
            "tree": voc.TREE,
            "hedge": voc.HEDGE,
            "crosswalk": voc.CROSSWALK,
            "lamp post": voc.LAMP_POST,
        }[e.category]
    )
    attr = _pick(rng, sorted(spec.attributes))
    choices = [o for o in spec.attributes[attr] if o != e.attrs[attr]]
    if not choices:
        return False
    e.attrs[attr] = _pick(rng, choices)
    return True


def _m_move_prop(rng: np.random.Generator, scene: Scene) -> bool:
    """Move a prop in front of another building: changes a relation, not an inventory."""
    movable = [
        e
        for e in scene.props
        if e.id not in scene.caption_ids and e.anchor is not None and e.category != "crosswalk"
    ]
    if not movable:
        return False
    e = movable[int(rng.integers(len(movable)))]
    others = [b.id for b in scene.buildings if b.id != e.anchor]
    options = [(a, s) for a in others for s in _free_slots(scene, a, e.side)]
    if e.category in ("hedge",):
        options = [(a, 0.5) for a in others]
    if not options:
        return False
    e.anchor, e.frac = options[int(rng.integers(len(options)))]
    return True


def _m_street(rng: np.random.Generator, scene: Scene) -> bool:
    attr = _pick(rng, sorted(voc.STREET_ATTRIBUTES))
    scene.street[attr] = _pick(
        rng, [o for o in voc.STREET_ATTRIBUTES[attr] if o != scene.street[attr]]
    )
    return True


MUTATIONS: tuple[Mutation, ...] = (
    _m_building_attr("colour"),
    _m_building_attr("material"),
    _m_building_attr("floors"),
    _m_building_attr("awning"),
    _m_building_attr("name"),
    _m_building_attr("roof"),
    _m_building_attr("door"),
    _m_recategorise,
    _m_add_prop,
    _m_remove_prop,
    _m_prop_attr,
    _m_move_prop,
    _m_street,
)


def mutate(rng: np.random.Generator, archetype: Scene, n_mutations: int) -> Scene:
    """A copy of the archetype with ``n_mutations`` applied changes."""
    scene = copy.deepcopy(archetype)
    applied = 0
    for _ in range(n_mutations * 10):
        if applied >= n_mutations:
            break
        if MUTATIONS[int(rng.integers(len(MUTATIONS)))](rng, scene):
            applied += 1
    return scene


def apply_one_mutation(rng: np.random.Generator, scene: Scene) -> None:
    """In place; used to break a tie with an identical, earlier place."""
    for _ in range(50):
        if MUTATIONS[int(rng.integers(len(MUTATIONS)))](rng, scene):
            return


def signature(scene: Scene) -> tuple[object, ...]:
    """Everything the description can state; two places with equal signatures could not
    be told apart by any dialogue, so the generator never emits both."""
    cat = {b.id: b.category for b in scene.buildings}
    items = [
        (
            e.kind,
            e.category,
            tuple(sorted(e.attrs.items())),
            e.side,
            cat.get(e.anchor or "", ""),
            e.frac,
            e.count,
        )
        for e in scene.elements
    ]
    order = tuple(b.category for b in scene.buildings)
    return (tuple(sorted(scene.street.items())), order, tuple(sorted(items)))


# --- final ids and geometry -----------------------------------------------------------------

_PREFIX = {"building": "b", "furniture": "f", "vegetation": "v", "marking": "m"}


def finalize(scene: Scene) -> Scene:
    """Readable ids (``b1`` left-most building, ``f1`` ...) in left-to-right order."""
    spans = element_spans(scene)
    order = sorted(
        scene.elements,
        key=lambda e: (list(_PREFIX).index(e.kind), spans[e.id][0][0], e.side),
    )
    counters: dict[str, int] = {}
    mapping: dict[str, str] = {}
    for e in order:
        p = _PREFIX[e.kind]
        counters[p] = counters.get(p, 0) + 1
        mapping[e.id] = f"{p}{counters[p]}"
    out = copy.deepcopy(scene)
    out.elements = [copy.deepcopy(e) for e in order]
    for e in out.elements:
        e.id = mapping[e.id]
        e.anchor = mapping[e.anchor] if e.anchor else None
    out.caption_ids = tuple(mapping[i] for i in scene.caption_ids)
    return out


def building_extents(scene: Scene) -> dict[str, tuple[float, float]]:
    """Buildings stand in list order, left to right, separated by their gaps."""
    extents: dict[str, tuple[float, float]] = {}
    x = 0.0
    for b in scene.buildings:
        x += b.gap
        extents[b.id] = (x, x + b.width)
        x += b.width
    return extents


def frontage_length(scene: Scene) -> float:
    return max(x1 for _, x1 in building_extents(scene).values())


def element_spans(scene: Scene) -> dict[str, list[tuple[float, float]]]:
    """Per element, the street-axis extent (metres) of each of its instances."""
    ext = building_extents(scene)
    length = frontage_length(scene)
    spans: dict[str, list[tuple[float, float]]] = {k: [v] for k, v in ext.items()}
    for e in scene.props:
        if e.anchor is None:
            centres = [length * (k + 0.5) / e.count for k in range(e.count)]
            spans[e.id] = [(c - e.width / 2, c + e.width / 2) for c in centres]
            continue
        x0, x1 = ext[e.anchor]
        if e.category == "hedge":
            w = 0.7 * (x1 - x0)
            c = (x0 + x1) / 2
        else:
            w = e.width
            c = x0 + e.frac * (x1 - x0)
        spans[e.id] = [(c - w / 2, c + w / 2)]
    return spans
