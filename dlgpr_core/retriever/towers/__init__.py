"""CMPL on the frozen pretrained towers (dlgpr-lite's EfficientNet-Lite0 and MiniLM).

The from-scratch CMPL learns its vision tower from 1,000 places and stays weak; here the
paper's fine-grained branch (saliency token selection, the shared extractor with learnable
queries per level, hSDM + HI + multi-similarity) and the global heads sit on the towers'
cached outputs instead: `config` (a `CMPLConfig` whose levels are image strides and MiniLM
layers), `segments` (how a text is cut), `extract` (the towers), `cache` (their outputs on
disk), `model` (what is trained), `encoder` (the `FineEncoder` maps use, ``cmpl:<dir>``) and
`train` (the trainer over the caches).
"""
