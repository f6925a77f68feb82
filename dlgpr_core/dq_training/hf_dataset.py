"""DQ-pilot examples as a Hugging Face `datasets.Dataset` (prompt, images, completion) for trl."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dlgpr_core.dq_training.examples import (
    DQExample,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image


def _load_image(path: str, max_side: int) -> Image.Image:
    # Same decoding and resizing as DQPilotQuestioner's ImageCache, so training pixels
    # equal inference pixels.
    from PIL import Image

    with Image.open(path) as raw:
        img = raw.convert("RGB")
    img.thumbnail((max_side, max_side))
    return img


def to_hf_dataset(
    examples: Sequence[DQExample], image_max_side: int, with_completion: bool = True
) -> Dataset:
    """The conversational ``prompt`` + ``images`` columns trl's trainers read (SFT: also
    ``completion``, as one assistant message), plus the reward state columns."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for ex in examples:
        row: dict[str, Any] = {
            "prompt": ex.prompt,
            "images": [_load_image(p, image_max_side) for p in ex.images],
            "example_id": ex.example_id,
            "target": ex.target,
            "d0": ex.d0,
            "questions": list(ex.questions),
            "answers": list(ex.answers),
            "prev_rank": ex.prev_rank,
        }
        if with_completion:
            row["completion"] = [
                {"role": "assistant", "content": [{"type": "text", "text": ex.completion}]}
            ]
        rows.append(row)
    return Dataset.from_list(rows)
