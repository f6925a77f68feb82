"""Static-evaluation query sets: one text per place and wording variant, as JSONL.

Variants are ``<base>`` or ``<base>+asr``, with base one of ``generator`` (the training
wording, as a reference), ``caption`` (the vague first sentence), ``rephrased``
(spoken style), ``written`` or ``partial``. Each (seed, city, place, base) has its own
random stream, so ``rephrased+asr`` is exactly the ``rephrased`` text passed through
ASR noise, and adding a variant or a place never changes the texts of the others.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.synth.rephrase.asr import asr_noise
from dlgpr_core.synth.rephrase.describe import rephrase_place

DEFAULT_VARIANTS = ("generator", "rephrased", "rephrased+asr", "caption")

_BASE_STYLES = {"rephrased": "spoken", "written": "written", "partial": "partial"}
BASES = ("generator", "caption", *_BASE_STYLES)


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation query: the text a user might say for one place."""

    place_id: str
    """Namespaced ``"<city>:<id>"``, as in every place id the project stores."""
    city: str
    variant: str
    text: str


def _split_variant(variant: str) -> tuple[str, bool]:
    base, plus, suffix = variant.partition("+")
    if base not in BASES or (plus and suffix != "asr"):
        raise ValueError(f"unknown variant {variant!r}: use one of {BASES}, optionally with '+asr'")
    return base, bool(plus)


def _rng(seed: int, city: str, place_id: int, stream: str) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process.
    key = [seed, zlib.crc32(city.encode()), place_id, zlib.crc32(stream.encode())]
    return np.random.default_rng(key)


def make_eval_queries(
    places: Iterable[PlaceAnnotation],
    seed: int,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    asr_rate: float = 0.08,
) -> list[EvalQuery]:
    """One `EvalQuery` per place and variant, place-major, deterministic in ``seed``."""
    parsed = [(v, *_split_variant(v)) for v in variants]
    out: list[EvalQuery] = []
    for p in places:
        pid = namespaced_place_id(p.city, p.place_id)
        for variant, base, noisy in parsed:
            if base == "generator":
                text = p.description
            elif base == "caption":
                text = p.caption
            else:
                text = rephrase_place(p, _rng(seed, p.city, p.place_id, base), _BASE_STYLES[base])
            if noisy:
                text = asr_noise(text, _rng(seed, p.city, p.place_id, f"{base}+asr"), asr_rate)
            out.append(EvalQuery(place_id=pid, city=p.city, variant=variant, text=text))
    return out


_FIELDS = tuple(f.name for f in fields(EvalQuery))


def write_eval_queries(path: Path | str, queries: Iterable[EvalQuery]) -> None:
    """One JSON object per line, fields in a fixed order, so equal sets give equal bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for q in queries:
            fh.write(json.dumps(asdict(q), ensure_ascii=False))
            fh.write("\n")


def read_eval_queries(path: Path | str) -> list[EvalQuery]:
    """Load a query file; a malformed line fails naming file and line (a tool wrote it)."""
    path = Path(path)
    out: list[EvalQuery] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
                    raise ValueError(f"expected exactly the keys {_FIELDS}")
                if not all(isinstance(obj[k], str) for k in _FIELDS):
                    raise ValueError("all fields must be strings")
                out.append(EvalQuery(**obj))
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: invalid eval query: {err}") from err
    return out
