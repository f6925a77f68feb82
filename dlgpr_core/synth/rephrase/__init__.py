"""Evaluation-only re-wordings of SynthCities places, with speech-recognition noise.

A retriever trained on the generator's templated descriptions must also be scored on
descriptions it could not have memorised the shape of: other words, other sentence
order, spoken style, partial recall and ASR errors. Nothing here may feed training.
"""

from dlgpr_core.synth.rephrase.asr import asr_noise, asr_normalise
from dlgpr_core.synth.rephrase.describe import STYLES, mangle_name, rephrase_place
from dlgpr_core.synth.rephrase.queries import (
    DEFAULT_VARIANTS,
    EvalQuery,
    make_eval_queries,
    read_eval_queries,
    write_eval_queries,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "STYLES",
    "EvalQuery",
    "asr_noise",
    "asr_normalise",
    "make_eval_queries",
    "mangle_name",
    "read_eval_queries",
    "rephrase_place",
    "write_eval_queries",
]
