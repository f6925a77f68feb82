"""Reading, hashing and decoding one image file for the builder.

Kept apart from the database so it can run in worker threads and never raises: every
failure becomes a reason string that lands in the build report.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


@dataclass
class LoadedImage:
    """The outcome of loading one file: an RGB image and its content hash, or an error."""

    sha256: str | None
    image: Image.Image | None
    error: str | None


def load_image(path: Path) -> LoadedImage:
    """Hash the exact bytes (duplicates are found by content) and fully decode them.

    ``load()`` is what catches truncated files: ``Image.open`` only reads the header.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LoadedImage(None, None, f"unreadable file: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except UnidentifiedImageError:
        return LoadedImage(sha, None, "corrupt image: not a recognised image format")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        return LoadedImage(sha, None, f"corrupt image: {type(exc).__name__}: {exc}")
    return LoadedImage(sha, rgb, None)
