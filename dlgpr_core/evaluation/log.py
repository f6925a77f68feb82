"""The per-dialogue log of an evaluation run: one JSONL line per finished dialogue.

Every finished dialogue is appended at once, keyed by (city, questioner, update, evidence,
user, dialogue id); a rerun skips what the log holds, so an interrupted evaluation resumes,
and a torn last line (a crash mid-write) costs only the dialogue that was in flight.

Each record also carries the settings it ran with (rounds, confidence, seed, the models,
the encoder, ...): a rerun into the same log with other settings would otherwise skip every
dialogue and label the old records with the new settings, or average two seeds into one
row. `check_settings` refuses that, naming what differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError


@dataclass(frozen=True)
class DialogueRecord:
    """One finished dialogue as logged (one JSONL line)."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")
    """Reading a line checks every field's type (`DialogueLog.read`); unknown keys too."""

    city: str
    questioner: str
    update: str
    dialogue_id: str
    target: str
    d0: str
    questions: list[str]
    answers: list[str]
    ranks: list[int]
    """0-indexed whole-map rank of the target after each round (0 = d0 alone)."""
    stop_reason: str
    fallbacks: int
    """Questions asked in place of unusable model output (failed parses)."""
    question_ms: list[float]
    """Time the questioner took for each question."""
    round_ms: list[float]
    """Wall time of each answered round: answer + retrieval + re-ranking + next question."""
    evidence: str = ""
    """Annotator whose evidence the robot used ("oracle": ground truth)."""
    user: str = "facts"
    """Who answered: facts (exact), rephrased (a person's words), rephrased+asr, llm:..."""
    unread: int = 0
    """Answers the robot could not read (its reading failures)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """What the dialogue ran with beyond its key (rounds, confidence, seed, models,
    encoder, ...); empty only in logs written before settings were recorded."""

    @property
    def key(self) -> tuple[str, ...]:
        """Identity in the log: a rerun skips records it already holds."""
        return (self.city, self.questioner, self.update, self.evidence, self.user, self.dialogue_id)


_RECORD = TypeAdapter(DialogueRecord)


class DialogueLog:
    """Append-only JSONL of `DialogueRecord`s; a torn last line (crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[DialogueRecord]:
        """Every complete, well-typed record in the file. Any other line (torn by a crash,
        edited, nested past any parser's limit) is skipped: that dialogue simply runs
        again, rather than a wrong-typed record crashing the summary far from here."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = _RECORD.validate_json(line, strict=True)
            except ValidationError:
                continue
            if record.ranks:
                out.append(record)
        return out

    def append(self, record: DialogueRecord) -> None:
        """Write one record and flush it, so a crash loses at most the dialogue in flight."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as f:
            # After a crash mid-line, start a fresh line so the torn one stays alone.
            f.write(("\n" if torn else "") + json.dumps(asdict(record), ensure_ascii=False) + "\n")
            f.flush()


class SettingsMismatchError(ValueError):
    """The log holds dialogues of the same conditions run with other settings."""


def _show(value: object) -> str:
    return "unset" if value is None else repr(value)


def check_settings(
    records: Iterable[DialogueRecord],
    expected: Callable[[DialogueRecord], Mapping[str, Any] | None],
    path: Path,
    only_given: bool = False,
) -> None:
    """Refuse (`SettingsMismatchError`) when a record differs from the settings `expected`
    gives for it (None: the record belongs to another run, not compared). With
    `only_given`, keys the expectation does not name are not compared (settings known only
    later, e.g. a city's encoder once its map is open). The message names each differing
    setting with its logged and its current value."""
    diffs: dict[str, tuple[object, object]] = {}
    unrecorded = 0
    for record in records:
        want = expected(record)
        if want is None:
            continue
        if not record.settings:
            unrecorded += 1
            continue
        keys = set(want) if only_given else set(want) | set(record.settings)
        for key in sorted(keys):
            old, new = record.settings.get(key), want.get(key)
            if old != new and key not in diffs:
                diffs[key] = (old, new)
    advice = "use another --out, or rerun with the logged settings"
    if unrecorded:
        raise SettingsMismatchError(
            f"{path} holds {unrecorded} dialogue(s) of these conditions logged without their "
            f"settings (an older dlgpr), so a resume cannot tell whether they match: {advice}"
        )
    if diffs:
        shown = ", ".join(
            f"{key} {_show(old)} (logged) vs {_show(new)} (now)"
            for key, (old, new) in diffs.items()
        )
        raise SettingsMismatchError(
            f"{path} holds dialogues of these conditions run with other settings: {shown}; "
            f"resuming would skip them and report them under this run's settings: {advice}"
        )
