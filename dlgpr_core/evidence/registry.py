"""Annotators by spec string: the one place that knows how to build each.

    learned                    the shipped evidence model (default; offline)
    learned:<run dir>          a model trained with training/train_evidence.py
    zero-shot[:<vocab.yaml>]   phrase scoring with the map's own image-text encoder
    teacher:<hf id or path>    a vision-language teacher describes each image; noun phrases
    teacher:openai:<model>@<base url>   the same through an OpenAI-compatible endpoint
    ocr                        tesseract reads sign text

Annotator modules are imported only when chosen (the teacher pulls in spaCy, the learned
model torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlgpr_core.encoders.base import Encoder
from dlgpr_core.mapdb.annotating import ImageAnnotator

DEFAULT_ANNOTATOR = "learned"


def _learned(arg: str, encoder: Encoder | None, **options: Any) -> ImageAnnotator:
    from dlgpr_core.evidence.learned.annotator import create_learned_annotator

    return create_learned_annotator(arg, **options)


def _zero_shot(arg: str, encoder: Encoder | None, **options: Any) -> ImageAnnotator:
    from dlgpr_core.evidence.zero_shot import create_zero_shot_annotator

    if encoder is None:
        raise ValueError("zero-shot evidence scores images with the map's encoder: pass it")
    return create_zero_shot_annotator(arg, encoder=encoder, **options)


def _teacher(arg: str, encoder: Encoder | None, **options: Any) -> ImageAnnotator:
    from dlgpr_core.evidence.teacher import create_teacher_annotator

    if not arg:
        raise ValueError(
            "teacher needs a model: teacher:<hf id or path> or teacher:openai:<model>@<base url>"
        )
    return create_teacher_annotator(arg, **options)


def _ocr(arg: str, encoder: Encoder | None, **options: Any) -> ImageAnnotator:
    from dlgpr_core.evidence.ocr import create_ocr_annotator

    return create_ocr_annotator(arg, **options)


ANNOTATORS: dict[str, Callable[..., ImageAnnotator]] = {
    "learned": _learned,
    "zero-shot": _zero_shot,
    "teacher": _teacher,
    "ocr": _ocr,
}


def make_annotator(
    spec: str = DEFAULT_ANNOTATOR, encoder: Encoder | None = None, **options: Any
) -> ImageAnnotator:
    """Build an annotator from its spec (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    factory = ANNOTATORS.get(kind)
    if factory is None:
        raise ValueError(
            f"unknown annotator {spec!r}; use one of {sorted(ANNOTATORS)} "
            "(e.g. learned, zero-shot, teacher:openai:<model>@<url>, ocr)"
        )
    return factory(arg, encoder, **options)
