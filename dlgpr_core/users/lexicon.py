"""The simulated people's words: the evaluation rephraser's synonyms plus the generator's
own (a person who is asked "is it stucco?" knows what stucco is).

A simulated user reads the robot's free-text questions with this lexicon (people know many
ways to say "chemist"), while the robot reads answers with its own
(`dlgpr_core.dialogue.lexicon`); the two are kept apart on purpose.
"""

from __future__ import annotations

from dlgpr_core.dialogue.lexicon import Lexicon
from dlgpr_core.synth.rephrase.lexicon import (
    COLOUR_SYNONYMS,
    MATERIAL_SYNONYMS,
    PAVEMENT_SYNONYMS,
    SPECIES_SYNONYMS,
    WIDTH_SYNONYMS,
    category_lexicon,
)

USER_LEXICON = Lexicon(
    categories=category_lexicon(),
    colours={k: (*v, k) for k, v in COLOUR_SYNONYMS.items()},
    materials={
        **{k: (*v, k) for k, v in MATERIAL_SYNONYMS.items()},
        "metal": ("metal",),
        "bronze": ("bronze",),
        "white marble": ("marble",),
    },
    pavements=PAVEMENT_SYNONYMS,
    species=SPECIES_SYNONYMS,
    widths=WIDTH_SYNONYMS,
)
