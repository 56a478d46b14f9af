"""Stage 0 of the tiny model's build: pre-training its CLIP vision tower to see the world.

LLaVA starts from a vision tower that already sees (OpenAI's CLIP); ours is trained from
scratch, and a ViT learning only through a language model's answers is slow (shapes
plateaued near 80% that way). So, before the LLaVA stage, the vision tower is trained
directly on what the world's questions are about, through linear probes on the patch features
the projector will read (the same layer, CLS dropped), so that the knowledge has to live in
the patch tokens:

- per patch (dense): what the object under it is (background, one of the shapes, one of the
  letters) and its colour, in every scene: one shape, one letter, 1-5 scattered objects or
  one object per quadrant. This is what lets the language model name each object of a scene
  and where it is, as the patch features of LLaVA's CLIP do;
- from the mean of the patch features: how many objects there are, and a single object's
  shape and colour or letter, extent (box) and quadrant.

The probes are thrown away afterwards; the tower goes on into the LLaVA stage.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .canvas import render, render_ids
from .families import FAMILIES, make_item, sample_rng
from .palette import COLOR_NAMES, LETTERS, QUADRANTS, SHAPES
from .scenes import SceneDoesNotFit, one_shape, scatter_shapes
from .train_loop import train

MAX_OBJECTS = 5
IGNORE = -100


@dataclass
class VisionPretrainConfig:
    steps: int = 2500
    batch_images: int = 64
    lr: float = 1e-3
    warmup: int = 60
    min_lr_frac: float = 0.02
    eval_n: int = 400
    mix: tuple[float, float, float] = (0.30, 0.20, 0.35)  # single shape, single letter, 1-5 objects; rest: quadrants
    min_patch_ink: float = 0.1  # share of a patch an object must cover to label it


class WorldProbe(torch.nn.Module):
    """Linear read-outs of patch features: per patch what/colour; pooled count, quadrant, box."""

    def __init__(self, hidden: int):
        super().__init__()
        self.what = torch.nn.Linear(hidden, 1 + len(SHAPES) + len(LETTERS))  # 0: background
        self.color = torch.nn.Linear(hidden, len(COLOR_NAMES))
        self.pooled = torch.nn.ModuleDict({
            "shape": torch.nn.Linear(hidden, len(SHAPES)),
            "shape_color": torch.nn.Linear(hidden, len(COLOR_NAMES)),
            "letter": torch.nn.Linear(hidden, len(LETTERS)),
            "count": torch.nn.Linear(hidden, MAX_OBJECTS),
            "quadrant": torch.nn.Linear(hidden, len(QUADRANTS)),
            "box": torch.nn.Linear(hidden, 4),
        })

    def forward(self, patch_features: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = patch_features.mean(dim=1)
        return {"what": self.what(patch_features), "color": self.color(patch_features),
                **{name: head(pooled) for name, head in self.pooled.items()}}


def patch_features(vision_tower, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """The features LLaVA's projector reads: hidden states of `feature_layer`, CLS dropped."""
    out = vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[feature_layer][:, 1:]


def probe_scene(rng: random.Random, canvas: tuple[int, int], mix: tuple[float, float, float]):
    """A scene of the pre-training mix: single shape, single letter, 1-5 objects, or one per quadrant."""
    for _ in range(100):
        size = rng.randint(*canvas)
        r = rng.random()
        try:
            if r < mix[0]:
                return one_shape(rng, size)
            if r < mix[0] + mix[1]:
                return FAMILIES["letter"](rng, size)[0]
            if r < sum(mix):
                return scatter_shapes(rng, size, rng.randint(1, MAX_OBJECTS), letter_frac=0.2)
            return FAMILIES["describe"](rng, size)[0]
        except SceneDoesNotFit:
            continue
    raise RuntimeError("could not lay out a pre-training scene")


def patch_labels(scene, image_size: int, patch: int, min_ink: float) -> tuple[np.ndarray, np.ndarray]:
    """Per patch (row-major, as the vision tower orders them): what is under it (0 background,
    1.. shapes, then letters) and its colour index (IGNORE where it is not a shape)."""
    ids = np.asarray(render_ids(scene, image_size)).reshape(image_size // patch, patch, image_size // patch, patch)
    ids = ids.transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    n = len(scene.objects)
    share = np.stack([(ids == k).mean(1) for k in range(1, n + 1)], 1)  # (patches, objects)
    best = share.argmax(1)
    covered = share.max(1) >= min_ink
    what = np.zeros(len(ids), dtype=np.int64)
    color = np.full(len(ids), IGNORE, dtype=np.int64)
    for p in np.nonzero(covered)[0]:
        obj = scene.objects[best[p]]
        if obj.kind == "shape":
            what[p] = 1 + SHAPES.index(obj.name)
            color[p] = COLOR_NAMES.index(obj.color)
        else:
            what[p] = 1 + len(SHAPES) + LETTERS.index(obj.name)
    return what, color


def _single(scene, kind: str, index) -> int:
    """`index(object)` when the scene holds a single object of `kind`, else IGNORE."""
    objs = scene.objects
    return index(objs[0]) if len(objs) == 1 and objs[0].kind == kind else IGNORE


def encode_scenes(image_processor, scenes, patch: int, min_ink: float):
    """Pixel values; dense labels (what, colour); pooled labels (count, quadrant); boxes (NaN
    rows where the scene has several objects)."""
    pixels = torch.as_tensor(np.stack(image_processor(images=[render(s) for s in scenes])["pixel_values"]))
    side = pixels.shape[-1]
    dense = [patch_labels(s, side, patch, min_ink) for s in scenes]
    labels = {
        "what": torch.as_tensor(np.stack([d[0] for d in dense])),
        "color": torch.as_tensor(np.stack([d[1] for d in dense])),
        "count": torch.tensor([len(s.objects) - 1 for s in scenes]),
        "quadrant": torch.tensor([QUADRANTS.index(s.objects[0].quadrant(s.width, s.height)) if len(s.objects) == 1
                                  else IGNORE for s in scenes]),
        "shape": torch.tensor([_single(s, "shape", lambda o: SHAPES.index(o.name)) for s in scenes]),
        "shape_color": torch.tensor([_single(s, "shape", lambda o: COLOR_NAMES.index(o.color)) for s in scenes]),
        "letter": torch.tensor([_single(s, "letter", lambda o: LETTERS.index(o.name)) for s in scenes]),
    }
    boxes = torch.tensor([
        [v / s.width for v in s.objects[0].bbox()] if len(s.objects) == 1 else [float("nan")] * 4 for s in scenes
    ])
    return pixels, labels, boxes


def probe_loss(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(outputs["what"].flatten(0, 1), labels["what"].flatten())
    loss = loss + F.cross_entropy(outputs["color"].flatten(0, 1), labels["color"].flatten(), ignore_index=IGNORE)
    loss = loss + F.cross_entropy(outputs["count"], labels["count"])
    for head in ("quadrant", "shape", "shape_color", "letter"):
        if (labels[head] != IGNORE).any():
            loss = loss + F.cross_entropy(outputs[head], labels[head], ignore_index=IGNORE)
    has_box = ~torch.isnan(boxes[:, 0])
    if has_box.any():
        loss = loss + 10.0 * F.smooth_l1_loss(outputs["box"][has_box], boxes[has_box], beta=0.05)
    return loss


@torch.no_grad()
def probe_accuracy(vision_tower, probe: WorldProbe, image_processor, feature_layer: int, patch: int,
                   cfg: "VisionPretrainConfig", size: int, seed: int = 31_337) -> dict[str, float]:
    """On fresh images of `size` px: % of object patches whose object (shape or letter) the dense
    probe names right, in `describe` scenes and on single letters; % of `count` scenes counted right."""
    device = next(probe.parameters()).device
    acc = {}
    for family in ("describe", "letter", "count"):
        scenes = [make_item(family, sample_rng(seed, i, family), size).scene for i in range(cfg.eval_n)]
        pixels, labels, _ = encode_scenes(image_processor, scenes, patch, cfg.min_patch_ink)
        out = probe(patch_features(vision_tower, pixels.to(device), feature_layer))
        if family == "count":
            right = out["count"].argmax(-1).cpu() == labels["count"]
        else:
            on_object = labels["what"] > 0
            right = out["what"].argmax(-1).cpu()[on_object] == labels["what"][on_object]
        acc[f"{family}@{size}"] = round(100.0 * right.float().mean().item(), 1)
    return acc


def pretrain_vision(model, image_processor, cfg: VisionPretrainConfig, seed: int,
                    canvas: tuple[int, int], progress: bool = True, device: str = "cpu",
                    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
    """Train `model`'s vision tower (a LlavaForConditionalGeneration) in place; return a record.

    `precision` is the forward pass's context (`train_loop.autocast_for`)."""
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    torch.manual_seed(seed)
    probe = WorldProbe(tower.config.hidden_size).to(device)
    opt = torch.optim.AdamW([*tower.parameters(), *probe.parameters()], lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(f"vision:{seed}")

    patch = model.config.vision_config.patch_size

    def make_batch():
        scenes = [probe_scene(rng, canvas, cfg.mix) for _ in range(cfg.batch_images)]
        return encode_scenes(image_processor, scenes, patch, cfg.min_patch_ink)

    def batch_loss(batch) -> torch.Tensor:
        pixels, labels, boxes = batch
        labels = {k: v.to(device) for k, v in labels.items()}
        return probe_loss(probe(patch_features(tower, pixels.to(device), layer)), labels, boxes.to(device))

    tower.train()
    run = train(opt, make_batch, batch_loss, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac, "pre-train vision tower", progress,
                precision)
    tower.eval()
    accuracy: dict[str, float] = {}
    for size in (64, 128):
        accuracy.update(probe_accuracy(tower, probe, image_processor, layer, patch, cfg, size))
    return {"steps": cfg.steps, "batch_images": cfg.batch_images, "lr": cfg.lr, **run, "probe_accuracy": accuracy}
