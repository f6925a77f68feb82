"""CMPL retriever (paper Sec. 4.2): multi-level fine-grained alignment on an open_clip CLIP."""

from .config import ABLATION_PRESETS, CMPLConfig, LongTextConfig, ablation_preset
from .extractor import FineGrainedExtractor
from .factory import (
    MissingWeightsError,
    build_clip,
    create_cmpl,
    image_preprocess,
    load_cmpl,
    save_cmpl,
)
from .features import ImageFeatures, TextFeatures
from .long_text import (
    LongTextTokenizer,
    TokenizedText,
    stretch_positional_embedding,
    stretch_text_tower,
)
from .losses import (
    CMPLLoss,
    hi_loss,
    hi_loss_from_similarity,
    multi_similarity_loss,
    sdm_loss,
    sdm_loss_from_similarity,
)
from .model import CMPL
from .saliency import SaliencyFilter, cls_patch_attention
from .similarity import pairwise_similarity

__all__ = [
    "ABLATION_PRESETS",
    "CMPL",
    "CMPLConfig",
    "CMPLLoss",
    "FineGrainedExtractor",
    "ImageFeatures",
    "LongTextConfig",
    "LongTextTokenizer",
    "MissingWeightsError",
    "SaliencyFilter",
    "TextFeatures",
    "TokenizedText",
    "ablation_preset",
    "build_clip",
    "cls_patch_attention",
    "create_cmpl",
    "hi_loss",
    "hi_loss_from_similarity",
    "image_preprocess",
    "load_cmpl",
    "multi_similarity_loss",
    "pairwise_similarity",
    "save_cmpl",
    "sdm_loss",
    "sdm_loss_from_similarity",
    "stretch_positional_embedding",
    "stretch_text_tower",
]
