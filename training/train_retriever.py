"""Train the CMPL retriever from one YAML config plus dotted overrides.

    python training/train_retriever.py --config training/configs/synth_small.yaml
    python training/train_retriever.py --config training/configs/synth_tiny.yaml \
        data_root=/tmp/synth max_steps=20 out_dir=runs/tiny
    torchrun --nproc_per_node=4 training/train_retriever.py \
        --config training/configs/paper_vitb16.yaml
    python training/train_retriever.py --config training/configs/cmpl_towers.yaml

A YAML with ``trainer: towers`` trains CMPL on the frozen pretrained towers over their cached
features (`dlgpr_core.retriever.towers.train`); every other config trains the open_clip CMPL.

A run resumes from <out_dir>/last when it exists (resume=false to start over). Logs go to
<out_dir>/metrics.csv and val.csv (and TensorBoard with log=tensorboard).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlgpr_core.retriever.towers.train import TowerTrainConfig, is_tower_config
from dlgpr_core.retriever.towers.train import train as train_tower_cmpl
from dlgpr_core.retriever.train import ConfigError, TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, required=True, help="training YAML")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        if is_tower_config(args.config):
            return train_towers(TowerTrainConfig.from_yaml(args.config, args.overrides), rank)
        config = TrainConfig.from_yaml(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    result = train(config)
    if rank == 0:
        summary = {
            "out_dir": str(result.out_dir),
            "step": result.step,
            "epoch": result.epoch,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "best_R@1": result.best_r1,
        }
        print(json.dumps(summary, indent=2))
    return 0


def train_towers(config: TowerTrainConfig, rank: int) -> int:
    result = train_tower_cmpl(config)
    if rank == 0:
        best = result.best_checkpoint
        summary = {
            "out_dir": str(result.out_dir),
            "step": result.step,
            "best_checkpoint": str(best) if best else None,
            "best_score": result.best_score,
            "best_metrics": max(result.val_history, key=lambda r: r["score"], default=None),
        }
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
