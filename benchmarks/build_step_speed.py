"""Time per training step of the tiny model's build, plain fp32 against bf16 autocast, in one run.

Both stages of `python -m llaca.world build` (`--mixed-precision no|bf16`): the vision tower's
pre-training step (64 images through the tower and its probes) and the LLaVA-stage step (48
multi-turn conversations, tower frozen). Each step is forward, backward, gradient clipping and
AdamW, on pre-drawn batches so that only torch work is timed; median over --repeats after one
warm-up step. The ratio is bf16's speed over fp32's on the same batches and weights.

    python benchmarks/build_step_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llaca.learn.encoding import answer_loss, encode_supervised  # noqa: E402
from llaca.world.build import BuildConfig, base_conversation  # noqa: E402
from llaca.world.processor import build_processor  # noqa: E402
from llaca.world.tiny import build_model  # noqa: E402
from llaca.world.train_loop import autocast_for  # noqa: E402
from llaca.world.vision_pretrain import (  # noqa: E402
    WorldProbe,
    encode_scenes,
    patch_features,
    probe_loss,
    probe_scene,
)


def median_step_seconds(params, loss_of, batches, precision, repeats: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        with precision():
            loss = loss_of(batches[i % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, the build's budget)")
    ap.add_argument("--repeats", type=int, default=8, help="timed steps per stage and precision (default: 8)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = BuildConfig()
    processor = build_processor(cfg.arch.image_size, cfg.arch.patch_size)
    model = build_model(cfg.arch)
    tower, layer, patch = model.model.vision_tower, model.config.vision_feature_layer, cfg.arch.patch_size
    probe = WorldProbe(cfg.arch.vision_hidden)
    rng = random.Random(0)
    vision_batches = [encode_scenes(processor.image_processor,
                                    [probe_scene(rng, cfg.canvas, cfg.vision.mix) for _ in range(cfg.vision.batch_images)],
                                    patch, cfg.vision.min_patch_ink) for _ in range(3)]
    lm_batches = [encode_supervised(processor, [base_conversation(rng, cfg.canvas) for _ in range(cfg.batch_images)])
                  for _ in range(3)]

    def vision_loss(batch):
        pixels, labels, boxes = batch
        return probe_loss(probe(patch_features(tower, pixels, layer)), labels, boxes)

    stages = {
        "vision pre-training": ([*tower.parameters(), *probe.parameters()], vision_loss, vision_batches),
        "LLaVA stage": ([p for n, p in model.named_parameters() if "vision_tower" not in n],
                        lambda b: answer_loss(model, b), lm_batches),
    }
    print(f"build step, {args.threads} threads, median of {args.repeats} (arch {cfg.arch.image_size} px, "
          f"patch {cfg.arch.patch_size})")
    for name, (params, loss_of, batches) in stages.items():
        if name == "LLaVA stage":
            tower.requires_grad_(False)
        fp32 = median_step_seconds(params, loss_of, batches, autocast_for("cpu", "no"), args.repeats)
        bf16 = median_step_seconds(params, loss_of, batches, autocast_for("cpu", "bf16"), args.repeats)
        print(f"  {name:20s} fp32 {fp32 * 1000:7.1f} ms  bf16 autocast {bf16 * 1000:7.1f} ms  speed x{fp32 / bf16:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
