"""Resuming DQ-pilot's SFT and GRPO runs from the trainer's own checkpoints.

transformers' `Trainer` writes ``checkpoint-<step>/`` directories under its output folder
(adapter, optimizer, scheduler, RNG) and `trainer_state.json` last of all, so a directory
whose state file is missing, unreadable or of another step is a save a crash interrupted.
`resume_point` picks the newest whole one, says when it had to pass over torn ones, and
refuses when checkpoints exist but none can be loaded: a silent restart from step 0 would
throw away a run's work and look like success.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be resumed from; the message says what to do."""


def _whole(directory: Path, step: int) -> str | None:
    """None when `directory` is a finished save of `step`, else why it is not."""
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE_FILE} (the save did not finish)"
    except (OSError, ValueError) as exc:
        return f"unreadable {STATE_FILE} ({type(exc).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{STATE_FILE} is not of step {step}"
    return None


def resume_point(output_dir: Path) -> Path | None:
    """The newest whole ``checkpoint-<step>`` under `output_dir`, None when there is none
    (a fresh start); `CheckpointError` when there are some and none is whole."""
    found = []
    for child in Path(output_dir).glob("checkpoint-*"):
        m = _NAME.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    torn: list[str] = []
    for step, directory in sorted(found, reverse=True):
        why = _whole(directory, step)
        if why is None:
            if torn:
                log.warning(
                    "resuming from %s, passing over newer torn checkpoints: %s",
                    directory,
                    "; ".join(torn),
                )
            return directory
        torn.append(f"{directory.name}: {why}")
    if torn:
        raise CheckpointError(
            f"{output_dir} holds checkpoints but none can be resumed from ({'; '.join(torn)}); "
            "refusing to start again from step 0 over them: delete them to start afresh, or "
            "set resume=false"
        )
    return None
