"""The learned evidence model: small heads over the frozen dlgpr-lite image trunk.

`annotator.LearnedAnnotator` (``create_learned_annotator``) is the offline default annotator
shipped with the package; `train` (driven by ``training/train_evidence.py``) trains it from
a SynthCities city's region boxes (`targets`, the only module here that reads ground truth;
the annotator never imports it).
"""

from .annotator import LearnedAnnotator, create_learned_annotator

__all__ = ["LearnedAnnotator", "create_learned_annotator"]
