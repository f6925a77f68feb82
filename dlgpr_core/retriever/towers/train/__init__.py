"""Training the tower CMPL over cached tower features, in the image trainer's split:

- `params`: `TowerTrainConfig` and its YAML (``trainer: towers``);
- `data`: cached city features, texts (with the text augmentation) and P x K batches;
- `validation`: R@K on the validation city from its cached features, the selection score;
- `checkpoint`: resumable checkpoints;
- `loop`: `train()`.

The distributed, precision, RNG, schedule and metrics helpers are `retriever.train`'s.
"""

from .loop import TowerTrainResult, train
from .params import TowerTrainConfig, is_tower_config

__all__ = ["TowerTrainConfig", "TowerTrainResult", "is_tower_config", "train"]
