"""Questioners by name: the one place that knows how to build each from common options.

Command lines, the ROS questioner node, the evaluation and the trainers all say
``make_questioner("info-gain", evidence=..., top_k=10, seed=3)``; each entry takes from
`QuestionerOptions` what its questioner needs (a seed for the random baseline, a search for
PlugIR, a model and adapter for the VLMs), so no caller special-cases a questioner. Model-
backed questioners are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dlgpr_core.dialogue.questioner import Questioner
from dlgpr_core.dialogue.questioners import InfoGainQuestioner, RandomQuestioner
from dlgpr_core.evidence.knowledge import EvidenceSource

if TYPE_CHECKING:
    from dlgpr_core.mapdb.report import PlaceHit


@dataclass(frozen=True)
class QuestionerOptions:
    """Everything any registered questioner may need; each uses its part."""

    evidence: EvidenceSource = field(default_factory=lambda: EvidenceSource(lambda _ids: {}))
    """What the map's images show about each place (`EvidenceSource.of_map`)."""
    top_k: int | None = None
    """Candidates a questioner reasons about (None: its own default; info-gain: every
    candidate the dialogue's belief covers)."""
    seed: int = 0
    search: Callable[[str, int], list[PlaceHit]] | None = None
    """PlugIR retrieves with its candidate questions' predicted answers."""
    model: str | None = None
    """VLM id or path (dq-pilot, vlm-zero-shot)."""
    adapter: str | None = None
    """LoRA adapter of dq-pilot."""
    llm: str | None = None
    """Chat model of PlugIR: a path, a hub id or ``openai:<model>@<url>``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Questioner-specific settings passed through (e.g. DQPilotConfig fields)."""


def _info_gain(o: QuestionerOptions) -> Questioner:
    return InfoGainQuestioner(o.evidence, top_k=o.top_k, **o.extra)


def _random(o: QuestionerOptions) -> Questioner:
    return RandomQuestioner(o.evidence, seed=o.seed, top_k=o.top_k or 10)


def _vlm(o: QuestionerOptions, adapter: str | None) -> Questioner:
    """DQ-pilot (with a LoRA adapter) or its zero-shot baseline (without); the model loads
    here, once, so callers share one questioner between dialogues."""
    from dlgpr_core.dialogue.dq_pilot import DQPilotConfig, DQPilotQuestioner

    fields: dict[str, Any] = dict(o.extra, adapter=adapter)
    if o.model:
        fields["model"] = o.model
    return DQPilotQuestioner(DQPilotConfig(**fields), evidence=o.evidence)


def _dq_pilot(o: QuestionerOptions) -> Questioner:
    return _vlm(o, o.adapter)


def _zero_shot(o: QuestionerOptions) -> Questioner:
    if o.adapter:
        raise ValueError("vlm-zero-shot runs the VLM without an adapter; use dq-pilot for one")
    return _vlm(o, None)


def _plugir(o: QuestionerOptions) -> Questioner:
    """The PlugIR baseline over a chat model given by spec (path, hub id, openai:...)."""
    from dlgpr_core.dialogue.plugir import PlugIRQuestioner
    from dlgpr_core.llm.chat import create_chat_model

    if not o.llm:
        raise ValueError("plugir needs a chat model: pass llm=<path, hub id or openai:...>")
    if o.search is None:
        raise ValueError("plugir needs the map's search to score its candidate questions")
    return PlugIRQuestioner(create_chat_model(o.llm), o.search, o.evidence, **o.extra)


QUESTIONERS: dict[str, Callable[[QuestionerOptions], Questioner]] = {
    "info-gain": _info_gain,
    "random": _random,
    "dq-pilot": _dq_pilot,
    "vlm-zero-shot": _zero_shot,
    "plugir": _plugir,
}

SEEDED = frozenset({"random"})
"""Questioners whose choices depend on `seed`: an evaluation builds one per dialogue so a
resumed run asks what an uninterrupted one would; the others are built once and shared."""


def make_questioner(
    name: str,
    *,
    evidence: EvidenceSource | None = None,
    top_k: int | None = None,
    seed: int = 0,
    search: Callable[[str, int], list[PlaceHit]] | None = None,
    model: str | None = None,
    adapter: str | None = None,
    llm: str | None = None,
    **extra: Any,
) -> Questioner:
    """Build a registered questioner by name (see `QUESTIONERS`)."""
    try:
        factory = QUESTIONERS[name]
    except KeyError:
        raise ValueError(f"unknown questioner {name!r}; known: {sorted(QUESTIONERS)}") from None
    options = QuestionerOptions(
        evidence=evidence if evidence is not None else EvidenceSource(lambda _ids: {}),
        top_k=top_k,
        seed=seed,
        search=search,
        model=model,
        adapter=adapter,
        llm=llm,
        extra=extra,
    )
    return factory(options)
