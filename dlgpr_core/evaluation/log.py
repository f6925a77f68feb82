"""The per-dialogue log of an evaluation run: one JSONL line per finished dialogue.

Every finished dialogue is appended at once, keyed by (city, questioner, update, evidence,
user, dialogue id); a rerun skips what the log holds, so an interrupted evaluation resumes,
and a torn last line (a crash mid-write) costs only the dialogue that was in flight.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DialogueRecord:
    """One finished dialogue as logged (one JSONL line)."""

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

    @property
    def key(self) -> tuple[str, ...]:
        """Identity in the log: a rerun skips records it already holds."""
        return (self.city, self.questioner, self.update, self.evidence, self.user, self.dialogue_id)


class DialogueLog:
    """Append-only JSONL of `DialogueRecord`s; a torn last line (crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[DialogueRecord]:
        """Every complete record in the file."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                out.append(DialogueRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # an interrupted write; that dialogue simply runs again
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
