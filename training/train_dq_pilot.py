"""Train DQ-pilot (paper Sec. 4.3): LoRA SFT on teacher dialogues, then GRPO with
R = alpha * R_prg + beta * R_fmt, from one YAML config plus dotted overrides.

    # tiny plumbing run on a CPU (random-weight Qwen2.5-VL built on demand; outputs are noise)
    python training/train_dq_pilot.py --config training/configs/dq_pilot_tiny.yaml \
        data.data_root=/tmp/synth out_dir=runs/dq_tiny

    # the 7B run on a GPU machine: build the examples once (single process, uses the map's
    # retriever), then SFT and GRPO on all GPUs (bf16, LoRA; DDP through accelerate)
    python training/train_dq_pilot.py --config training/configs/dq_pilot_qwen7b.yaml stage=data
    accelerate launch --num_processes 2 training/train_dq_pilot.py \
        --config training/configs/dq_pilot_qwen7b.yaml stage=sft
    accelerate launch --num_processes 2 training/train_dq_pilot.py \
        --config training/configs/dq_pilot_qwen7b.yaml stage=grpo
    # (torchrun --nproc_per_node=2 training/train_dq_pilot.py ... works the same way)

Stages: ``data`` writes ``<out_dir>/examples.jsonl``; ``sft`` trains a LoRA adapter into
``<out_dir>/sft``; ``grpo`` continues that adapter (``grpo.init_adapter`` overrides) into
``<out_dir>/grpo``; ``all`` runs the three in turn. Each stage reuses an existing
examples file built by the same data and retrieval settings (recorded beside it in
``examples.jsonl.key.json``; other settings rebuild it, or, for a file given as
``data.examples``, are refused), so every rank of a multi-GPU run reads the same examples.
The resolved config is written to ``<out_dir>/dq_train_config.yaml``.

Both training stages save the trainer's checkpoints every ``save_steps`` steps under
``<out_dir>/checkpoints/<stage>`` and, with ``resume: true`` (the default), a rerun continues
from the newest whole one (a torn one, left by a crash while saving, is passed over and
named; checkpoints none of which loads are refused, never silently trained over). The
adapters are written beside their folder and swapped in whole. The trained adapter runs with
``DQPilotConfig(model=<base>, adapter=<out_dir>/grpo, top_k_images=..., image_max_side=...,
max_regions=...)`` using the ``data`` prompt settings of the config (they shape the prompt).

The model path ``tiny:<dir>`` builds a random-weight tiny Qwen2.5-VL into ``<dir>`` when it
is missing (`dlgpr_core.llm.tiny`): plumbing only, never a result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlgpr_core.atomic import recover_dir, replace_dir, staged, write_atomic
from dlgpr_core.config import ConfigError, apply_overrides, explain_validation_error
from dlgpr_core.data.annotations import PlaceAnnotation, places_by_id, read_annotations
from dlgpr_core.dialogue.engine import SearchFn
from dlgpr_core.dialogue.metrics import DDIConfig
from dlgpr_core.dialogue.state import DialogueConfig
from dlgpr_core.dq_training.checkpoints import resume_point
from dlgpr_core.dq_training.curriculum import EmbedTexts, curriculum_split, score_difficulty
from dlgpr_core.dq_training.examples import (
    DQDataConfig,
    DQExample,
    build_examples,
    cache_drift,
    read_examples,
    write_cache_key,
    write_examples,
)
from dlgpr_core.dq_training.hf_dataset import to_hf_dataset
from dlgpr_core.dq_training.lexical_search import LexicalSearch
from dlgpr_core.dq_training.rewards import RetrievalGainReward, format_reward
from dlgpr_core.evaluation.runner import file_digest

log = logging.getLogger("train_dq_pilot")

TINY_PREFIX = "tiny:"
EXAMPLES_FILE = "examples.jsonl"
CONFIG_DUMP = "dq_train_config.yaml"


class _Strict(BaseModel):
    # Unknown keys are errors, so a typo never falls back to a default silently.
    model_config = ConfigDict(extra="forbid")


class DataSection(_Strict):
    """Where dialogues come from and the prompt settings (they must match inference)."""

    data_root: Path = Path("data/synth")
    cities: list[str] = Field(default_factory=lambda: ["Traintown"], min_length=1)
    max_places: int | None = Field(default=None, ge=1)
    """Dialogue targets per city (first places by id); None: all."""
    examples: Path | None = None
    """A prebuilt examples JSONL; None: <out_dir>/examples.jsonl, built when missing."""
    max_rounds: int = Field(default=5, ge=1)
    top_k: int = Field(default=10, ge=1)
    """Candidates the teacher weighs (the engine's top_k)."""
    top_k_images: int = Field(default=5, ge=1)
    image_max_side: int = Field(default=448, ge=28)
    max_regions: int = Field(default=6, ge=0)
    min_prg: float | None = None
    """The paper's tau_1 filter on the teacher's rounds; None keeps every round."""


class RetrievalSection(_Strict):
    """The search used to build dialogues and to compute R_prg."""

    kind: Literal["lexical", "map"] = "lexical"
    """lexical: TF-IDF over descriptions (CPU stand-in); map: a built map + its encoder."""
    map_dir: Path | None = None
    encoder: str | None = None
    """Encoder spec; None: the one the map recorded."""
    checkpoint: Path | None = None
    search_k: int | None = Field(default=None, ge=1)
    """Places per search; None: the whole map, so ranks are whole-map ranks."""


class LoraSection(_Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class SFTSection(_Strict):
    max_steps: int = Field(default=-1)
    save_steps: int = Field(default=200, ge=1)
    """Checkpoint every this many optimizer steps (a rerun resumes from the newest)."""
    save_total_limit: int = Field(default=2, ge=1)
    """Checkpoints kept (older ones are deleted once a newer one is whole)."""
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    max_length: int | None = Field(default=None, ge=16)
    grad_checkpointing: bool = False


class GRPOSection(_Strict):
    init_adapter: Path | None = None
    """Adapter to continue; None: <out_dir>/sft (the paper's SFT-then-GRPO)."""
    max_steps: int = Field(default=-1)
    save_steps: int = Field(default=200, ge=1)
    """Checkpoint every this many optimizer steps (a rerun resumes from the newest)."""
    save_total_limit: int = Field(default=2, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=1e-6, gt=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    num_generations: int = Field(default=4, ge=2)
    max_completion_length: int = Field(default=512, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    kl_beta: float = Field(default=0.0, ge=0.0)
    """KL coefficient of GRPO (trl's `beta`); not the reward weight below."""
    reward_alpha: float = 1.0
    """Weight of R_prg (paper Eq. 9, alpha; no value given in the paper)."""
    reward_beta: float = 0.5
    """Weight of R_fmt (paper Eq. 9, beta; no value given in the paper)."""
    grad_checkpointing: bool = False


class CurriculumSection(_Strict):
    """The paper's DDI curriculum (Sec. 4.1): drop rounds with PRG < tau_1, then SFT on a
    mostly low-DDI set and GRPO on a disjoint mostly high-DDI one. Off: both stages use
    every example."""

    enabled: bool = False
    ddi: DDIConfig = Field(default_factory=DDIConfig)
    n_sft: int | None = Field(default=None, ge=1)
    """SFT examples (the paper: 20k); None: two thirds of what survives the filter."""
    n_grpo: int | None = Field(default=None, ge=1)
    """GRPO examples (the paper: 10k); None: the rest."""
    major_share: float = Field(default=0.7, ge=0.0, le=1.0)


class DQTrainConfig(_Strict):
    """Everything a run depends on; written beside the adapters."""

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Hub id, local directory, or tiny:<dir> (built on demand, random weights)."""
    stage: Literal["data", "sft", "grpo", "all"] = "all"
    out_dir: Path = Path("runs/dq_pilot")
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    use_cpu: bool = False
    logging_steps: int = Field(default=1, ge=1)
    resume: bool = True
    """Continue each stage from its newest whole checkpoint; false: start it afresh."""
    data: DataSection = Field(default_factory=DataSection)
    retrieval: RetrievalSection = Field(default_factory=RetrievalSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> DQTrainConfig:
        """YAML, then dotted ``key=value`` overrides parsed as YAML (``sft.lr=1e-4``)."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a training config must be a YAML mapping")
        apply_overrides(data, overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            header = f"{path}: invalid DQ-pilot training config"
            raise ConfigError(explain_validation_error(err, cls, header)) from err

    def data_config(self, search_k: int | None = None) -> DQDataConfig:
        """The example builder's settings (and so the inference prompt settings);
        `search_k` is the searches' k (the map size: whole-map ranks for teacher PRG)."""
        d = self.data
        return DQDataConfig(
            dialogue=DialogueConfig(
                max_rounds=d.max_rounds,
                top_k=d.top_k,
                search_k=max(d.top_k, search_k or self.retrieval.search_k or d.top_k),
                confidence=None,
            ),
            top_k_images=d.top_k_images,
            image_max_side=d.image_max_side,
            max_regions=d.max_regions,
            min_prg=d.min_prg,
        )


# --------------------------------------------------------------------------- data / search


def load_places(cfg: DQTrainConfig) -> list[PlaceAnnotation]:
    """The targets: each city's annotations, first `max_places` by place id."""
    out: list[PlaceAnnotation] = []
    for city in cfg.data.cities:
        path = cfg.data.data_root / "Annotations" / f"{city}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"no annotations for {city}: expected {path}")
        places = sorted(read_annotations(path), key=lambda p: p.place_id)
        out.extend(places[: cfg.data.max_places] if cfg.data.max_places else places)
    return out


def make_search(
    cfg: DQTrainConfig, places: Sequence[PlaceAnnotation]
) -> tuple[SearchFn, int, EmbedTexts]:
    """The search callable, its k (whole map unless `retrieval.search_k` is set) and the
    retriever's text encoder (the curriculum's phi_T)."""
    r = cfg.retrieval
    if r.kind == "lexical":
        lexical = LexicalSearch(places, cfg.data.data_root.resolve())
        return lexical, r.search_k or len(places), lexical.embed
    if r.map_dir is None:
        raise ConfigError("retrieval.kind=map needs retrieval.map_dir")
    from dlgpr_core.dialogue.engine import map_search
    from dlgpr_core.encoders.factory import create_encoder
    from dlgpr_core.mapdb.database import MapDatabase

    db = MapDatabase.open(r.map_dir)
    name, ckpt = db.encoder_choice(r.encoder, r.checkpoint)
    encoder = create_encoder(name, checkpoint=ckpt)
    return map_search(db, encoder), r.search_k or db.info().n_places, encoder.encode_texts


def examples_path(cfg: DQTrainConfig) -> Path:
    return cfg.data.examples or cfg.out_dir / EXAMPLES_FILE


def examples_settings(cfg: DQTrainConfig) -> dict[str, Any]:
    """Everything that shapes the examples (the cache key): the data and retrieval
    sections, where the data lives (examples store image paths) and what its annotation
    files hold."""
    data = cfg.data.model_dump(mode="json", exclude={"examples"})
    annotations = {}
    for city in cfg.data.cities:
        path = cfg.data.data_root / "Annotations" / f"{city}.jsonl"
        annotations[city] = file_digest(path) if path.exists() else None
    return {
        "data": data,
        "data_root": str(cfg.data.data_root.resolve()),
        "retrieval": cfg.retrieval.model_dump(mode="json"),
        "annotations": annotations,
    }


def get_examples(
    cfg: DQTrainConfig, places: Sequence[PlaceAnnotation], search: SearchFn, search_k: int
) -> list[DQExample]:
    """Read the examples file, building it first when missing (rank 0 only).

    Teacher PRG here is the place-rank stand-in (`prg_place_rank`): `make_search` gives a
    place search only (lexical: one description per place, no images; map: places ranked by
    their best image, fine re-ranked for CMPL), so no image ranks exist for Eq. 2.
    `build_examples(image_search=...)` takes them once an image search with the same
    re-ranking is available.
    """
    path = examples_path(cfg)
    settings = examples_settings(cfg)
    drift = cache_drift(path, settings) if path.exists() else None
    if path.exists() and drift == []:
        return read_examples(path)
    if path.exists() and cfg.data.examples is not None:
        # The user named this file: never rebuild it behind their back.
        if drift is None:
            log.warning("%s has no record of the settings that built it; using it as given", path)
            return read_examples(path)
        raise ConfigError(
            f"data.examples={path} was built by other settings (they differ in {drift}); "
            "point data.examples elsewhere, delete it to rebuild, or use the settings it "
            "was built with"
        )
    if int(os.environ.get("RANK", "0")) != 0:
        raise FileNotFoundError(
            f"{path} missing or built by other settings: run stage=data once before a multi-GPU run"
        )
    if path.exists():
        why = "no record of what built it" if drift is None else f"other settings: {drift}"
        log.warning("rebuilding %s (%s)", path, why)
    examples = build_examples(places, search, cfg.data_config(search_k))
    write_examples(path, examples)
    write_cache_key(path, settings)
    log.info("wrote %d examples to %s", len(examples), path)
    return read_examples(path)


# --------------------------------------------------------------------------- model


def resolve_model(spec: str, seed: int) -> str:
    """A loadable model path or hub id; ``tiny:<dir>`` is built there when missing."""
    if not spec.startswith(TINY_PREFIX):
        return spec
    directory = Path(spec[len(TINY_PREFIX) :])
    if not (directory / "config.json").exists():
        from dlgpr_core.llm.tiny import build_tiny_qwen2_5_vl

        build_tiny_qwen2_5_vl(directory, seed=seed)
    return str(directory)


def _dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_base(cfg: DQTrainConfig) -> tuple[Any, Any]:
    """Base VLM and its processor (the processor is trl's `processing_class`)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model(cfg.model, cfg.seed)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=_dtype(cfg.precision))
    return model, processor


def checkpoint_dir(cfg: DQTrainConfig, stage: str) -> Path:
    """The trainer's output folder of a stage (its checkpoint-<step> directories); beside
    the adapter folder, not in it, so the adapter can be swapped in whole."""
    return cfg.out_dir / "checkpoints" / stage


def _common_args(
    cfg: DQTrainConfig, stage: str, section: SFTSection | GRPOSection
) -> dict[str, Any]:
    return {
        "output_dir": str(checkpoint_dir(cfg, stage)),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "use_cpu": cfg.use_cpu,
        "bf16": cfg.precision == "bf16",
        "fp16": cfg.precision == "fp16",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": section.save_steps,
        "save_total_limit": section.save_total_limit,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def _resume_from(cfg: DQTrainConfig, stage: str) -> str | None:
    """The checkpoint a stage continues from (None: a fresh start); asked before any model
    loads, so checkpoints that cannot be resumed are refused at once."""
    start = resume_point(checkpoint_dir(cfg, stage)) if cfg.resume else None
    if start is None:
        return None
    log.info("%s: resuming from %s", stage, start)
    return str(start)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_sft(cfg: DQTrainConfig, examples: Sequence[DQExample]) -> Path:
    """LoRA SFT on the teacher completions (loss on the completion only)."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    out = cfg.out_dir / "sft"
    start = _resume_from(cfg, "sft")
    model, processor = load_base(cfg)
    s = cfg.sft
    args = SFTConfig(
        **_common_args(cfg, "sft", s),
        max_steps=s.max_steps,
        num_train_epochs=s.epochs,
        learning_rate=s.lr,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        warmup_steps=s.warmup_ratio,  # a float < 1 is a ratio of the total steps
        max_length=s.max_length,
        gradient_checkpointing=s.grad_checkpointing,
        completion_only_loss=True,
    )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    dataset = to_hf_dataset(examples, cfg.data.image_max_side, with_completion=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora,
    )
    trainer.train(resume_from_checkpoint=start)
    _save(trainer, processor, out, cfg)
    return out


def run_grpo(
    cfg: DQTrainConfig,
    examples: Sequence[DQExample],
    places: Sequence[PlaceAnnotation],
    search: SearchFn,
    search_k: int,
) -> Path:
    """GRPO from the SFT adapter with R = alpha * R_prg + beta * R_fmt (paper Eq. 9).

    R_prg is the place-rank stand-in of Eq. 2 (`prg_place_rank`): `search` ranks places, not
    images (see `get_examples`); `RetrievalGainReward(image_search=...)` computes Eq. 2 over
    the target's image ranks where an image search exists.
    """
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    init = cfg.grpo.init_adapter or cfg.out_dir / "sft"
    note = recover_dir(init)
    if note is not None:
        log.warning("%s", note)
    if not (init / "adapter_config.json").exists():
        raise FileNotFoundError(f"no adapter to continue at {init}: run stage=sft first")
    out = cfg.out_dir / "grpo"
    start = _resume_from(cfg, "grpo")
    base, processor = load_base(cfg)
    model = PeftModel.from_pretrained(base, str(init), is_trainable=True)
    g = cfg.grpo
    args = GRPOConfig(
        **_common_args(cfg, "grpo", g),
        max_steps=g.max_steps,
        num_train_epochs=g.epochs,
        learning_rate=g.lr,
        per_device_train_batch_size=g.batch_size,
        gradient_accumulation_steps=g.grad_accum,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        beta=g.kl_beta,
        reward_weights=[g.reward_alpha, g.reward_beta],
        gradient_checkpointing=g.grad_checkpointing,
    )
    by_id = places_by_id(places)
    reward = RetrievalGainReward(by_id, search, search_k)
    dataset = to_hf_dataset(examples, cfg.data.image_max_side, with_completion=False)
    # trl types reward callables as returning list[float | None]; lists are invariant.
    reward_funcs: list[Any] = [reward, format_reward]  # order matches reward_weights
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=start)
    _save(trainer, processor, out, cfg)
    return out


def _save(trainer: Any, processor: Any, out: Path, cfg: DQTrainConfig) -> None:
    # Only the adapter is saved (save_pretrained of the peft model), plus the processor so
    # the directory is self-describing; the base model is named in the config dump. Built
    # beside `out` and swapped in whole: GRPO and inference trust what is there.
    if not _is_main():
        return
    recover_dir(out)
    tmp = staged(out)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    history = [dict(h) for h in trainer.state.log_history]
    (tmp / "log_history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    replace_dir(tmp, out)
    log.info("saved adapter to %s", out)


# --------------------------------------------------------------------------- main


def train(cfg: DQTrainConfig) -> dict[str, str]:
    """Run the configured stage(s); returns the produced paths by name."""
    from transformers import set_seed

    set_seed(cfg.seed)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if _is_main():
        dump = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        write_atomic(cfg.out_dir / CONFIG_DUMP, dump)
    places = load_places(cfg)
    search, search_k, embed = make_search(cfg, places)
    examples = get_examples(cfg, places, search, search_k)
    if not examples:
        raise RuntimeError("no training examples: the teacher asked no question")
    produced = {"examples": str(examples_path(cfg))}
    sft_set, grpo_set = list(examples), list(examples)
    if cfg.curriculum.enabled:
        c = cfg.curriculum
        by_id = places_by_id(places)
        scored = score_difficulty(examples, by_id, embed, c.ddi)
        sft_set, grpo_set = curriculum_split(
            scored, c.ddi, c.n_sft, c.n_grpo, c.major_share, seed=cfg.seed
        )
        if not sft_set or not grpo_set:
            raise RuntimeError(
                f"the curriculum left {len(sft_set)} SFT and {len(grpo_set)} GRPO examples "
                f"of {len(examples)}: lower curriculum.ddi.tau_1 or build more dialogues"
            )
        produced["curriculum"] = f"{len(sft_set)} SFT / {len(grpo_set)} GRPO examples"
        log.info("DDI curriculum: %s", produced["curriculum"])
    if cfg.stage in ("sft", "all"):
        set_seed(cfg.seed)
        produced["sft"] = str(run_sft(cfg, sft_set))
    if cfg.stage in ("grpo", "all"):
        set_seed(cfg.seed)
        produced["grpo"] = str(run_grpo(cfg, grpo_set, places, search, search_k))
    return produced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, required=True, help="training YAML")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if _is_main() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = DQTrainConfig.from_yaml(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    produced = train(cfg)
    if _is_main():
        print(json.dumps(produced, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
