"""Stage 0 of the tiny model's build: pre-training its CLIP vision tower to see shapes.

LLaVA starts from a vision tower that already sees (OpenAI's CLIP); ours is trained from
scratch, and a ViT learning shapes only through a language model's answers is slow (the
shape skill plateaued near 80% that way, star/triangle and square/circle confused even on
large shapes). So, before the LLaVA stage, the vision tower is trained directly to name the
shape and colour of single-shape images (the `color`/`shape` families' scenes, all canvas
sizes). A linear probe reads the mean of the patch features that the projector will read
(the same layer, CLS dropped), so the knowledge has to live in the patch tokens. The probe is
thrown away afterwards; the tower goes on into the LLaVA stage, which adds captions
(positions, letters) on top.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .families import make_item, sample_rng
from .palette import COLOR_NAMES, SHAPES
from .train_loop import train


@dataclass
class VisionPretrainConfig:
    steps: int = 3000
    batch_images: int = 64
    lr: float = 1e-3
    warmup: int = 60
    min_lr_frac: float = 0.02
    eval_n: int = 400


class ShapeColorProbe(torch.nn.Module):
    """Linear read-out of mean-pooled patch features: shape logits and colour logits."""

    def __init__(self, hidden: int):
        super().__init__()
        self.shape = torch.nn.Linear(hidden, len(SHAPES))
        self.color = torch.nn.Linear(hidden, len(COLOR_NAMES))

    def forward(self, patch_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = patch_features.mean(dim=1)
        return self.shape(pooled), self.color(pooled)


def patch_features(vision_tower, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """The features LLaVA's projector reads: hidden states of `feature_layer`, CLS dropped."""
    out = vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[feature_layer][:, 1:]


def encode_items(image_processor, items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel values and (shape, colour) class indices of single-shape world items."""
    pixels = torch.as_tensor(np.stack(image_processor(images=[it.image for it in items])["pixel_values"]))
    shapes = torch.tensor([SHAPES.index(it.scene.objects[0].name) for it in items])
    colors = torch.tensor([COLOR_NAMES.index(it.scene.objects[0].color) for it in items])
    return pixels, shapes, colors


@torch.no_grad()
def probe_accuracy(vision_tower, probe: ShapeColorProbe, image_processor, feature_layer: int,
                   n: int, size: int, seed: int = 31_337) -> float:
    """% of fresh `shape`-family images whose shape the probe names right."""
    items = [make_item("shape", sample_rng(seed, i, "shape"), size) for i in range(n)]
    pixels, shapes, _ = encode_items(image_processor, items)
    shape_logits, _ = probe(patch_features(vision_tower, pixels, feature_layer))
    return round(100.0 * (shape_logits.argmax(-1) == shapes).float().mean().item(), 1)


def pretrain_vision(model, image_processor, cfg: VisionPretrainConfig, seed: int,
                    canvas: tuple[int, int], progress: bool = True) -> dict:
    """Train `model`'s vision tower (a LlavaForConditionalGeneration) in place; return a record."""
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    torch.manual_seed(seed)
    probe = ShapeColorProbe(tower.config.hidden_size)
    opt = torch.optim.AdamW([*tower.parameters(), *probe.parameters()], lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(f"vision:{seed}")

    def step_loss() -> torch.Tensor:
        items = [make_item("shape", rng, canvas) for _ in range(cfg.batch_images)]
        pixels, shapes, colors = encode_items(image_processor, items)
        shape_logits, color_logits = probe(patch_features(tower, pixels, layer))
        return F.cross_entropy(shape_logits, shapes) + F.cross_entropy(color_logits, colors)

    tower.train()
    run = train(opt, step_loss, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac, "pre-train vision tower", progress)
    tower.eval()
    return {
        "steps": cfg.steps, "batch_images": cfg.batch_images, "lr": cfg.lr, **run,
        "probe_shape_accuracy": {
            f"shape@{size}": probe_accuracy(tower, probe, image_processor, layer, cfg.eval_n, size)
            for size in (64, 128)
        },
    }
