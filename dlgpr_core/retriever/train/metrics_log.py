"""Training and validation logs: an append-only CSV, optionally mirrored to TensorBoard."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only CSV (columns fixed by the first row), optionally mirrored to TensorBoard.

    On resume, rows past the resumed step are dropped: they come from steps the run is about
    to redo, so the file ends up identical to an uninterrupted run's.
    """

    def __init__(self, path: Path, resume_step: int, tensorboard_dir: Path | None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.fields)
                writer.writeheader()
                writer.writerows(rows)
        self.tb: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("log=tensorboard but tensorboard is not installed; CSV only")
            else:
                self.tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)

    def write(self, row: dict[str, float | int]) -> None:
        new = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:
            log.warning("%s: dropping columns %s not in the header", self.path.name, extra)
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
