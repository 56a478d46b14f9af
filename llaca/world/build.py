"""Training the embedded tiny LLaVA from scratch on the world's base families.

Two stages. First the CLIP vision tower is pre-trained to name shapes and colours
(`vision_pretrain`, standing in for the pre-trained CLIP that LLaVA starts from). Then, like
LLaVA's own recipe, the whole model learns from captions (`describe`: every object's colour,
shape or letter and its quadrant) and answers the base questions (`color`, `shape`), with
the vision tower at a reduced learning rate so the language side cannot wash out what it
sees. Each training image carries all its questions as one multi-turn conversation, which
gives several answers' worth of supervision per vision forward. Everything is seeded and
the schedule is step-based, so a build is reproducible.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..dataset import VQASample
from ..encoding import answer_loss, encode_supervised
from ..evaluate import evaluate
from .families import make_item, sample_rng
from .processor import build_processor
from .tiny import TinyArch, build_model
from .train_loop import train
from .vision_pretrain import VisionPretrainConfig, pretrain_vision

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    arch: TinyArch = field(default_factory=TinyArch)
    vision: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)
    steps: int = 2000
    batch_images: int = 48
    lr: float = 1e-3
    vision_lr_scale: float = 0.1
    warmup: int = 60
    min_lr_frac: float = 0.02
    seed: int = 0
    canvas: tuple[int, int] = (48, 160)
    eval_n: int = 200
    eval_sets: tuple[tuple[str, int | tuple[int, int]], ...] = (
        ("color", 64), ("shape", 64), ("describe", 64), ("color", (48, 160)), ("shape", (48, 160)),
    )
    threads: int | None = None


def base_conversation(rng: random.Random, canvas: tuple[int, int]) -> VQASample:
    """One training image with its base questions as one conversation, in random order."""
    if rng.random() < 0.5:
        item = make_item("color", rng, canvas)
        obj = item.scene.objects[0]
        turns = [item.turns[0], ("What shape is this?", obj.name)]
    else:
        item = make_item("describe", rng, canvas)
        turns = list(item.turns)
        objs = item.scene.objects
        if len(objs) == 1 and objs[0].kind == "shape":
            turns += [("What color is the shape?", objs[0].color), ("What shape is this?", objs[0].name)]
    rng.shuffle(turns)
    return VQASample("train", item.image, turns, "base")


def heldout(family: str, n: int, seed: int = 10_000, size: int | tuple[int, int] = 64) -> list[VQASample]:
    items = [make_item(family, sample_rng(seed, i, family), size) for i in range(n)]
    return [VQASample(f"{family}-{i}", it.image, it.turns, family) for i, it in enumerate(items)]


def build(cfg: BuildConfig, out: Path | None = None, progress: bool = True) -> dict:
    """Train a tiny LLaVA; save model + processor to `out`; return the build record."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    processor = build_processor(cfg.arch.image_size, cfg.arch.patch_size, seed=cfg.seed)
    cfg.arch.vocab_size = max(cfg.arch.vocab_size, 64 * math.ceil(len(processor.tokenizer) / 64))
    model = build_model(cfg.arch, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    vision_record = None
    if cfg.vision.steps > 0:
        vision_record = pretrain_vision(model, processor.image_processor, cfg.vision, cfg.seed, cfg.canvas, progress)
        log.info("vision tower pre-trained: %s", vision_record)
    vision_params = list(model.model.vision_tower.parameters())
    vision_ids = {id(p) for p in vision_params}
    opt = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if id(p) not in vision_ids], "lr_scale": 1.0},
         {"params": vision_params, "lr_scale": cfg.vision_lr_scale if cfg.vision.steps > 0 else 1.0}],
        lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98),
    )
    rng = random.Random(f"build:{cfg.seed}")

    def step_loss() -> torch.Tensor:
        conversations = [base_conversation(rng, cfg.canvas) for _ in range(cfg.batch_images)]
        return answer_loss(model, encode_supervised(processor, conversations))

    model.train()
    run = train(opt, step_loss, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac, "build tiny llava", progress)
    model.eval()
    accuracy = {
        f"{fam}@{size}": evaluate(model, processor, heldout(fam, cfg.eval_n, size=size)).accuracy
        for fam, size in cfg.eval_sets
    }
    record = {
        "config": {**asdict(cfg), "arch": cfg.arch.to_dict()},
        "parameters": n_params,
        "vision_pretraining": vision_record,
        **run,
        "build_seconds": round(run["train_seconds"] + (vision_record or {}).get("train_seconds", 0.0), 1),
        "heldout_accuracy": accuracy,
        "torch_threads": torch.get_num_threads(),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "build_record.json").write_text(json.dumps(record, indent=1))
        for f in out.iterdir():
            f.chmod(0o644)
    return record
