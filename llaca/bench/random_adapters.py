"""Routed systems of random LoRA adapters, made in seconds: for tests and serving benchmarks.

The adapters are random (peft's `init_lora_weights=False`, B scaled down), so each group
answers visibly differently from the base model and from the others: enough to tell which
adapter answered a row, to check batched answers against unbatched ones, and to measure
serving with several groups without training any."""

from __future__ import annotations

from pathlib import Path

import torch

from llaca.groups.codebook import InstructionCodebook
from llaca.groups.system import RoutedSystem
from llaca.learn.tuner import LM_TARGETS
from llaca.worker.adapter_files import staging_dir

FAMILIES = ("color", "shape", "count", "position")


def random_adapter(base, out: Path, seed: int, r: int = 4, b_scale: float = 0.3) -> Path:
    """A LoRA folder with random A and B on the text model's projections; `base` is left as it was."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LM_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    model.save_pretrained(out)
    model.unload()
    return out


def routed_system(base, root: Path, families=FAMILIES, version: str = "v1", r: int = 4,
                  b_scale: float = 0.3) -> tuple[Path, dict[str, str]]:
    """A routed version folder under `root` with one random adapter per family's questions;
    returns it and {family: group id}."""
    from llaca.world.heldout import heldout

    book = InstructionCodebook()
    groups, adapters = {}, {}
    for k, family in enumerate(families):
        questions = sorted({s.question for s in heldout(family, 12, seed=50 + k)})
        groups[family] = book.add(questions)
        adapters[groups[family]] = random_adapter(base, root / "runs" / family, seed=100 + k, r=r,
                                                 b_scale=b_scale)
    system = RoutedSystem(book, adapters, {g: f"{version}-r{k}" for k, g in enumerate(adapters)})  # names unique per version
    return system.write(staging_dir(root / "adapters", version)), groups
