"""A batched chat backend over any Hugging Face image-text-to-text model.

The DQ-pilot questioner and its zero-shot baseline differ only in weights (a LoRA adapter
or none), so both go through this one loader: a hub id for users with internet, a local
directory for robots and for the tiny test models, and the same `generate` call whether the
batch holds one dialogue or a whole evaluation run in lockstep. transformers, torch and peft
are imported inside functions, so importing this module (e.g. to build a CLI) costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

Message = dict[str, Any]
"""One chat message: ``{"role": ..., "content": str | [{"type": "image"} | {"type": "text",
"text": ...}]}``; the images of a conversation are passed separately, in order."""


class ChatBackend(Protocol):
    """What a questioner needs from a VLM; tests substitute a scripted object."""

    def generate(
        self,
        batch: Sequence[Sequence[Message]],
        images: Sequence[Sequence[Image.Image]],
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 0.7,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per conversation of `batch`, same order."""
        ...


_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def resolve_device(device: str) -> str:
    """ "auto" picks the GPU when there is one; anything else is passed through (checked)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """ "auto": bf16 on GPUs that support it (fp16 on older ones), fp32 on CPU, where half
    precision is slow or unsupported for many kernels."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        value: torch.dtype = getattr(torch, _DTYPES[dtype.lower()])
        return value
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', {sorted(_DTYPES)}") from None


def _looks_like_path(name: str) -> bool:
    """A hub id is 'org/name'; anything absolute, relative-dotted or deeper is a path."""
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
    )


def _check_source(name: str | Path, what: str, marker: str) -> str:
    """Fails early with the path in the message, instead of a hub lookup error about a
    'repo id' that was really a mistyped directory."""
    text = str(name)
    if isinstance(name, Path) or _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
        if not path.is_dir() or not (path / marker).is_file():
            raise FileNotFoundError(
                f"{what} {path} is not a saved {what} directory (no {marker} in it)"
            )
        return str(path)
    return text


@dataclass(frozen=True)
class VLMSettings:
    """Where the weights come from and where they run."""

    model: str
    """Hub id (needs internet once) or local directory saved with `save_pretrained`."""
    adapter: str | None = None
    """Optional peft (LoRA) adapter directory or hub id, applied on top of `model`."""
    device: str = "auto"
    dtype: str = "auto"


class VisionLanguageChat:
    """A loaded image-text-to-text model + processor with batched, left-padded generation."""

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        import torch  # noqa: F401  (fails early with a clear ImportError)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.settings = VLMSettings(
            str(model), None if adapter is None else str(adapter), device, dtype
        )
        source = _check_source(model, "model", "config.json")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            # On a GPU, load straight onto it: a 7B model staged in CPU RAM first needs
            # its whole size twice over.
            extra = {"device_map": self.device} if self.device.startswith("cuda") else {}
            net: Any = AutoModelForImageTextToText.from_pretrained(
                source, dtype=self.dtype, **extra
            )
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise ValueError(
                    f"{source} is not an image-text-to-text (vision-language) model: {exc}"
                ) from exc
            raise
        except OSError as exc:
            raise OSError(
                f"could not load model {source!r} (offline, or not a hub id / directory?): {exc}"
            ) from exc
        self.processor = AutoProcessor.from_pretrained(source)
        if getattr(self.processor, "image_processor", None) is None:
            raise ValueError(f"{source} has no image processor, so it cannot read images")
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"{source}'s processor has no tokenizer")
        # Decoder-only batches must be left padded, or new tokens follow pad tokens.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if adapter is not None:
            from peft import PeftModel

            adapter_source = _check_source(adapter, "adapter", "adapter_config.json")
            net = PeftModel.from_pretrained(net, adapter_source)
        self.model = net.to(self.device).eval()
        log.info(
            "loaded %s%s on %s (%s)",
            source,
            f" + adapter {adapter}" if adapter else "",
            self.device,
            self.dtype,
        )

    @property
    def name(self) -> str:
        """Model (and adapter) identity, for logs and reports."""
        s = self.settings
        return s.model if s.adapter is None else f"{s.model}+{s.adapter}"

    def generate(
        self,
        batch: Sequence[Sequence[Message]],
        images: Sequence[Sequence[Image.Image]],
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 0.7,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per conversation; `images[i]` fills the image items of `batch[i]`
        in order. `seed` makes sampling reproducible (it seeds torch's global generators)."""
        import torch

        if len(batch) != len(images):
            raise ValueError(f"{len(batch)} conversations but {len(images)} image lists")
        if not batch:
            return []
        for i, (msgs, imgs) in enumerate(zip(batch, images, strict=True)):
            n_slots = sum(
                1
                for m in msgs
                if not isinstance(m.get("content"), str)
                for item in m.get("content", ())
                if item.get("type") == "image"
            )
            if n_slots != len(imgs):
                raise ValueError(f"conversation {i} has {n_slots} image items, {len(imgs)} images")
        texts = [
            self.processor.apply_chat_template(
                list(msgs), tokenize=False, add_generation_prompt=True
            )
            for msgs in batch
        ]
        flat = [img.convert("RGB") for imgs in images for img in imgs]
        inputs = self.processor(
            text=texts, images=flat or None, padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if seed is not None:
            torch.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            kwargs["temperature"] = temperature
        else:
            # Unset the checkpoint's sampling defaults, which greedy decoding warns about.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [str(t).strip() for t in decoded]


def load_vlm(
    model: str | Path,
    adapter: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> VisionLanguageChat:
    """Load a VLM chat backend; see `VisionLanguageChat`."""
    return VisionLanguageChat(model, adapter=adapter, device=device, dtype=dtype)
