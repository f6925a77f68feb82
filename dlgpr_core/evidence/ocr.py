"""OCR evidence: the text on signs, read by tesseract.

A shop's name on its sign is the single most telling fact of a street view ("the bakery
called Golden Crust"), and a person is likely to mention it, so reading it from the map's
images is worth an annotator of its own. Each line tesseract reads with enough confidence
becomes an item ``a sign that reads "X"`` (attribute ``name``, value X, no category: the
text alone does not say whose sign it is) with tesseract's mean word confidence and the
line's box in image pixels.

On SynthCities' 320x240 views it reads almost nothing usable (measured: whole frames give
noise, 4x upscaled building crops "Fret city" for "First City Bank", empty for most signs;
see the shared tool notes), so this annotator is optional and off by default; it is meant
for maps of real, higher-resolution street views. ``upscale`` enlarges images before
reading, since tesseract wants letters some 20-30 pixels high.

Tesseract runs as the Debian binary (``apt-get install tesseract-ocr tesseract-ocr-eng``;
`scripts/setup.sh` installs it) through a subprocess, which needs no Python package.

Spec strings (``create_ocr_annotator(arg)`` gets what follows ``ocr:``): ``ocr`` (English)
or ``ocr:<tesseract languages>``, e.g. ``ocr:eng+deu``. Keyword options: ``upscale``,
``min_confidence`` (0-100, tesseract's scale), ``psm`` (page segmentation mode; 11, sparse
text, suits signs in a scene), ``workers``, ``timeout``, ``binary``, ``name``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dlgpr_core.mapdb.evidence import EvidenceItem

log = logging.getLogger(__name__)

NAME = "ocr"
INSTALL_HINT = "install tesseract: apt-get install tesseract-ocr tesseract-ocr-eng"


class TesseractNotFoundError(RuntimeError):
    """The tesseract binary (or a requested language) is not installed."""


@dataclass(frozen=True)
class TextLine:
    """One line tesseract read: its words, mean confidence (0-100) and box."""

    text: str
    confidence: float
    bbox: tuple[int, int, int, int]


def find_tesseract(binary: str = "tesseract") -> str | None:
    """The path of the tesseract binary, or None when it is not installed."""
    return shutil.which(binary)


def parse_tsv(tsv: str, scale: float = 1.0) -> list[TextLine]:
    """Lines from tesseract's TSV output (level 5 rows are words); boxes are divided by
    `scale` so they refer to the image before upscaling."""
    words: dict[tuple[int, int, int, int], list[tuple[str, float, int, int, int, int]]] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") != "5":
            continue
        text = (row.get("text") or "").strip()
        try:
            conf = float(row.get("conf") or -1)
            left, top, width, height = (int(row[k]) for k in ("left", "top", "width", "height"))
            page, block, par, line = (
                int(row[k]) for k in ("page_num", "block_num", "par_num", "line_num")
            )
        except (TypeError, ValueError):
            continue
        if not text or conf < 0:
            continue
        words.setdefault((page, block, par, line), []).append(
            (text, conf, left, top, width, height)
        )
    lines: list[TextLine] = []
    for _, ws in sorted(words.items()):
        text = " ".join(w[0] for w in ws)
        conf = sum(w[1] for w in ws) / len(ws)
        x0 = min(w[2] for w in ws)
        y0 = min(w[3] for w in ws)
        x1 = max(w[2] + w[4] for w in ws)
        y1 = max(w[3] + w[5] for w in ws)
        lines.append(
            TextLine(
                text, conf, (int(x0 / scale), int(y0 / scale), round(x1 / scale), round(y1 / scale))
            )
        )
    return lines


def plausible(text: str, min_letters: int = 2) -> bool:
    """Sign text rather than tesseract's noise: enough letters, mostly letters and digits."""
    letters = sum(c.isalpha() for c in text)
    useful = sum(c.isalnum() or c in " '&.-" for c in text)
    return letters >= min_letters and useful >= 0.8 * len(text)


class OcrAnnotator:
    """`ImageAnnotator` reading sign text with tesseract."""

    def __init__(
        self,
        languages: str = "eng",
        *,
        upscale: float = 2.0,
        min_confidence: float = 60.0,
        psm: int = 11,
        workers: int = 2,
        timeout: float = 60.0,
        binary: str = "tesseract",
        name: str = NAME,
    ) -> None:
        if upscale <= 0 or not 0 <= min_confidence <= 100 or workers < 1:
            raise ValueError("upscale must be > 0, min_confidence in [0, 100], workers >= 1")
        if not re.fullmatch(r"[A-Za-z_]+(\+[A-Za-z_]+)*", languages):
            raise ValueError(f"invalid tesseract languages {languages!r} (e.g. 'eng+deu')")
        path = find_tesseract(binary)
        if path is None:
            raise TesseractNotFoundError(f"{binary!r} not found on PATH; {INSTALL_HINT}")
        self.binary = path
        self.languages = languages
        self.upscale = upscale
        self.min_confidence = min_confidence
        self.psm = psm
        self.workers = workers
        self.timeout = timeout
        self.name = name
        self._tesseract_version = self._check()

    def _check(self) -> str:
        """The binary's version line; fails early when a requested language is missing."""
        out = subprocess.run(
            [self.binary, "--list-langs"], capture_output=True, text=True, timeout=self.timeout
        )
        have = {ln.strip() for ln in out.stdout.splitlines()[1:] if ln.strip()}
        missing = [lang for lang in self.languages.split("+") if lang not in have]
        if missing:
            raise TesseractNotFoundError(
                f"tesseract has no data for {missing} (has {sorted(have)}); install "
                f"tesseract-ocr-<lang> packages"
            )
        version = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=self.timeout
        )
        lines = (version.stdout or version.stderr).splitlines()
        return lines[0].strip() if lines else "tesseract"

    @property
    def version(self) -> str:
        settings = [
            self._tesseract_version,
            self.languages,
            self.upscale,
            self.min_confidence,
            self.psm,
        ]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
        return f"{self._tesseract_version}#{digest[:12]}"

    def read(self, image: Image.Image) -> list[TextLine]:
        """Every line tesseract reads in `image` (no filtering)."""
        img = image.convert("RGB")
        if self.upscale != 1.0:
            size = (
                max(1, round(img.width * self.upscale)),
                max(1, round(img.height * self.upscale)),
            )
            img = img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        # one thread per process: several processes run side by side instead
        env = dict(os.environ, OMP_THREAD_LIMIT="1")
        cmd = [self.binary, "stdin", "stdout", "-l", self.languages, "--psm", str(self.psm), "tsv"]
        done = subprocess.run(
            cmd, input=buf.getvalue(), capture_output=True, timeout=self.timeout, env=env
        )
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace")[:300]
            raise RuntimeError(f"tesseract failed ({done.returncode}): {detail}")
        return parse_tsv(done.stdout.decode("utf-8", errors="replace"), self.upscale)

    def items(self, image: Image.Image) -> list[EvidenceItem]:
        out: list[EvidenceItem] = []
        seen: set[str] = set()
        for line in self.read(image):
            text = " ".join(line.text.split()).strip(" .,:;|_-\"'")
            if line.confidence < self.min_confidence or not plausible(text) or text in seen:
                continue
            seen.add(text)
            out.append(
                EvidenceItem(
                    f'a sign that reads "{text}"',
                    min(1.0, line.confidence / 100.0),
                    attribute="name",
                    value=text,
                    bbox=line.bbox,
                )
            )
        return out

    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem]]:
        if self.workers == 1 or len(images) <= 1:
            return [self.items(img) for img in images]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(images))) as pool:
            return list(pool.map(self.items, images))


def create_ocr_annotator(arg: str = "", **options: Any) -> OcrAnnotator:
    """``""`` (English) or tesseract languages (``eng+deu``); see the module docstring."""
    return OcrAnnotator(arg.strip() or "eng", **options)
