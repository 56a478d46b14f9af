"""A routed system of four instruction groups with random LoRA adapters, made in seconds.

The adapters are random (peft's `init_lora_weights=False`), so each group answers visibly
differently from the base model and from the others: enough to tell which adapter answered
a row, and to check batched answers against unbatched ones."""

from __future__ import annotations

from pathlib import Path

import torch

from llaca.adapter_files import staging_dir
from llaca.groups import InstructionCodebook
from llaca.routed_system import RoutedSystem
from llaca.tuner import LM_TARGETS

FAMILIES = ("color", "shape", "count", "position")


def random_adapter(base, out: Path, seed: int, r: int = 4) -> Path:
    """A LoRA folder with random A and B on the text model's projections; `base` is left as it was."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LM_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    model.save_pretrained(out)
    model.unload()
    return out


def routed_system(base, root: Path, families=FAMILIES, version: str = "v1") -> tuple[Path, dict[str, str]]:
    """A routed version folder under `root` with one random adapter per family's questions;
    returns it and {family: group id}."""
    from llaca.world.heldout import heldout

    book = InstructionCodebook()
    groups, adapters = {}, {}
    for k, family in enumerate(families):
        questions = sorted({s.question for s in heldout(family, 12, seed=50 + k)})
        groups[family] = book.add(questions)
        adapters[groups[family]] = random_adapter(base, root / "runs" / family, seed=100 + k)
    system = RoutedSystem(book, adapters, {g: f"r{k}" for k, g in enumerate(adapters)})
    return system.write(staging_dir(root / "adapters", version)), groups
