"""One continual-tuning run: LLaVA-format samples -> a LoRA adapter, trained seq / ema / llaca.

LoRA goes on the language model's attention and MLP projections only (a bare `q_proj` would
also hit the CLIP tower). Training uses `accelerate` (device placement, bf16 on GPUs,
multi-GPU, gradient accumulation), AdamW with linear warm-up and cosine decay, and the
answer-only loss. After every optimizer step, before gradients are cleared, the EMA of the
chosen method is updated; when the task ends the EMA weights replace the trained ones, so
the EMA is what is saved, served and continued from. The result is a standard peft adapter
folder plus `run_record.json`.

The same function runs in one process or in N under `accelerate launch` (plain DDP; see
`llaca.tune` for the command line). Every process draws the same global batches of
`batch_size` and trains on its own shard of each (`_batches`); the model runs through the DDP
wrapper (`_AnswerLoss`), so gradients are averaged across processes in `backward`, before
the optimizer step and before the EMA reads `p.grad`. The loss is a token mean over the
global batch: each process divides its summed answer-token loss by the all-reduced token
count (times N, which DDP's averaging undoes), so the gradient does not depend on N or on
how the answer tokens fall between the shards. AdamW and the EMA then see identical
gradients on every process and compute the same α and θ*; the record carries a digest per
process to show it. Only the main process writes the adapter and the record.

Methods: `seq` plain sequential LoRA, `ema` fixed EMA (0.99), `llaca` adaptive EMA (the
authors' rule); `+replay` variants mix stored samples of earlier tasks into each batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from llaca.config.methods import TUNER_METHODS, uses_replay
from llaca.learn.dataset import VQASample
from llaca.learn.ema import AdaptiveEMA, FixedEMA
from llaca.learn.encoding import answer_loss, answer_tokens, encode_supervised
from llaca.learn.schedule import warmup_cosine

log = logging.getLogger(__name__)

TRAINING_ADAPTER = "llaca-training"  # the trained adapter's name in a shared model
LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


class TuningError(RuntimeError):
    """A tuning run cannot start or failed; the message says why."""


@dataclass
class TuneConfig:
    """One tuning run's configuration. Every field carries its help text (``metadata["help"]``,
    as peft's ``LoraConfig`` does); `python -m llaca.tune --help` prints them."""

    method: str = field(default="llaca", metadata={"help": "seq (plain continued LoRA), ema (fixed-beta EMA of the "
                        "weights), llaca (the adaptive EMA of arXiv 2410.10868), or one of them with +replay"})
    steps: int | None = field(default=200, metadata={"help": "optimizer steps; None: `epochs` over the samples decides"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the samples, when `steps` is None"})
    batch_size: int = field(default=16, metadata={"help": "samples per optimizer step (the global batch, over all "
                            "processes and accumulation steps)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_frac: float = field(default=0.05, metadata={"help": "share of the steps spent warming the rate up linearly"})
    min_lr_frac: float = field(default=0.0, metadata={"help": "the cosine decay's floor, as a share of `lr`"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "the gradients' total norm is clipped to this"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: str = field(default=LM_TARGETS, metadata={"help": "regex of the modules that get a LoRA (default: "
                                "the language model's attention and MLP projections)"})
    train_projector: bool = field(default=False, metadata={"help": "also train the multimodal projector (saved with "
                                  "the adapter)"})
    ema_beta: float = field(default=0.99, metadata={"help": "the fixed EMA's decay (method ema)"})
    replay_fraction: float = field(default=0.25, metadata={"help": "share of each batch drawn from the replay samples "
                                   "(+replay methods)"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, none on CPU), no, or bf16"})
    seed: int = field(default=0, metadata={"help": "seeds the LoRA init, the batch order and the replay draw"})

    def __post_init__(self) -> None:
        if self.method not in TUNER_METHODS:
            raise TuningError(f"unknown method {self.method!r}; choose one of {', '.join(TUNER_METHODS)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise TuningError("mixed_precision must be auto, no or bf16 (fp16 loss scaling would skew the EMA's gradients)")

    @property
    def ema_kind(self) -> str | None:
        return {"ema": "fixed", "llaca": "adaptive", "llaca+replay": "adaptive"}.get(self.method)


@dataclass
class TuneResult:
    adapter_dir: Path | None
    record: dict = field(default_factory=dict)
    ema_trace: dict | None = None  # `AdaptiveEMA.trace()` plus "names", when tune(trace_ema=True)
    rank_trace: dict = field(default_factory=dict)  # this process: its shard's sample ids per micro-batch, digests


Progress = Callable[[int, int, float], None]  # (step, total steps, recent loss)


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__}


def _lora_config(cfg: TuneConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
        modules_to_save=["multi_modal_projector"] if cfg.train_projector else None, bias="none",
    )


def _lora_model(base, cfg: TuneConfig, init_adapter: Path | None):
    from peft import PeftModel, get_peft_model

    if init_adapter is not None:
        model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
    else:
        model = get_peft_model(base, _lora_config(cfg))
    n_vision = sum(1 for n, p in model.named_parameters() if p.requires_grad and "vision_tower" in n)
    if n_vision:
        raise TuningError(f"LoRA reached the vision tower ({n_vision} tensors); fix target_modules")
    return model


def _check_split(cfg: TuneConfig, world: int) -> None:
    if cfg.batch_size % world:
        raise TuningError(f"batch size {cfg.batch_size} does not split over {world} processes; "
                          f"use a multiple of {world}")


def _batches(samples: Sequence[VQASample], replay: Sequence[VQASample], cfg: TuneConfig, total_micro: int,
             rank: int = 0, world: int = 1):
    """Seeded epoch-wise shuffling; +replay methods swap a fraction of each batch for replayed samples.

    Every process draws the same global batches of `cfg.batch_size` (same seed) and yields its
    shard: items rank, rank + world, ... of each, so replayed samples spread over the shards.
    """
    _check_split(cfg, world)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    n_replay = int(round(cfg.batch_size * cfg.replay_fraction)) if (uses_replay(cfg.method) and replay) else 0
    n_new = cfg.batch_size - n_replay
    for _ in range(total_micro):
        batch = []
        for _ in range(n_new):
            if not order:
                order = list(range(len(samples)))
                rng.shuffle(order)
            batch.append(samples[order.pop()])
        batch += [replay[rng.randrange(len(replay))] for _ in range(n_replay)]
        yield batch[rank::world]


class _AnswerLoss(torch.nn.Module):
    """The summed answer-token loss as a module, so that under DDP the forward runs through the
    wrapper (`answer_loss` reaches into the LLaVA's parts; called on a bare model, DDP would not
    prepare its gradient all-reduce)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_loss(self.model, batch, reduction="sum")


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 of the tensors' values (fp32 or wider) in order: equal digests, bitwise-equal values."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach()
        if t.is_floating_point():
            t = t.to(torch.promote_types(t.dtype, torch.float32))  # numpy has no bf16
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _rank_trace(accelerator, params: Sequence[torch.Tensor], ema, seen: list[list[str]]) -> dict:
    """What this process trained on and what it ended with, for comparing processes."""
    state = ema.state_dict() if ema is not None and ema.updates else None
    alpha = [state["alpha_sum"], state["fallback_count"], state["last_alphas"]] if state else []
    return {
        "rank": accelerator.process_index,
        "micro_batches": len(seen),
        "samples_seen": sum(len(b) for b in seen),
        "sample_ids_sha256": hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16],
        "params_sha256": _digest(params),  # after the hand-over: θ* where there is an EMA
        "alpha_sha256": _digest(alpha) if alpha else None,
        "alpha_sum": state["alpha_sum"].tolist() if state else None,
        "sample_ids": seen,
    }


def tune(
    base_model,
    processor,
    samples: Sequence[VQASample],
    cfg: TuneConfig,
    init_adapter: Path | None = None,
    out_dir: Path | None = None,
    replay: Sequence[VQASample] = (),
    progress: Progress | None = None,
    show_progress: bool = False,
    trace_ema: bool = False,
    shared=None,
) -> TuneResult:
    """Train a LoRA adapter on `samples` starting from `init_adapter` (or none); save it to `out_dir`.

    `base_model` is a LlavaForConditionalGeneration; LoRA layers are injected for the run and
    removed again afterwards (`unload`), so the caller's model is unchanged when this returns.
    With `shared` (a `llaca.model.shared.SharedModel`, the app's one model, `base_model` is
    then ignored) the run trains a named adapter of the shared model while it serves: only
    that adapter trains (the base and served adapters stay in eval mode and frozen), each
    step holds the model's layers in place (`shared.forward()`), and the adapter is deleted
    again at the end; the served adapters are not touched.
    `trace_ema` (adaptive methods only) records the EMA's per-step, per-tensor a, b, c and α
    into `TuneResult.ema_trace` (for analysis; see benchmarks/alpha_analysis.py).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed

    if not samples:
        raise TuningError("no samples to train on")
    if init_adapter is not None and not (Path(init_adapter) / "adapter_config.json").exists():
        raise TuningError(f"cannot start from adapter {init_adapter}: no adapter_config.json there")
    if trace_ema and cfg.ema_kind != "adaptive":
        raise TuningError(f"trace_ema needs an adaptive-EMA method, not {cfg.method!r}")
    set_seed(cfg.seed)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(samples) / (cfg.batch_size * cfg.grad_accum)))
    world = accelerator.num_processes
    _check_split(cfg, world)
    if shared is not None:
        model = shared.begin_training(TRAINING_ADAPTER, _lora_config(cfg), init_adapter)
    else:
        model = _lora_model(base_model, cfg, init_adapter)
    peft_model = model
    step_guard = shared.forward if shared is not None else nullcontext
    try:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, int(cfg.warmup_frac * steps))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, steps, warm, cfg.min_lr_frac))
        # the scheduler is stepped here, once per optimizer step: accelerate's prepared scheduler
        # steps num_processes times per step (it assumes the global batch grows with N)
        model, opt = accelerator.prepare(_AnswerLoss(model), opt)
        if shared is None:
            model.train()  # shared: begin_training put the trained adapter alone in train mode
        ema = None
        if cfg.ema_kind == "adaptive":
            ema = AdaptiveEMA(params, trace=trace_ema)
        elif cfg.ema_kind == "fixed":
            ema = FixedEMA(params, beta=cfg.ema_beta)
        losses: list[torch.Tensor] = []
        seen: list[list[str]] = []
        t0 = time.perf_counter()
        step = 0
        bar = tqdm(total=steps, desc=f"tune {cfg.method}", disable=not show_progress, mininterval=2)
        for batch_samples in _batches(samples, replay, cfg, steps * cfg.grad_accum,
                                      accelerator.process_index, world):
            seen.append([s.id for s in batch_samples])
            batch = {k: v.to(accelerator.device) for k, v in encode_supervised(processor, batch_samples).items()}
            # the global batch's answer tokens (one small all-reduce, no host sync); × world
            # because DDP averages the gradients over the processes
            global_tokens = accelerator.reduce(answer_tokens(batch), reduction="sum")
            with accelerator.accumulate(model), step_guard():
                with accelerator.autocast():
                    loss = model(batch) * world / global_tokens
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                if accelerator.sync_gradients:
                    if ema is not None:
                        ema.update()  # after the optimizer step, before the gradients are cleared
                    sched.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if accelerator.sync_gradients:
                step += 1
                bar.update(1)
                if progress is not None and (step % 10 == 0 or step == steps):
                    progress(step, steps, float(torch.stack(losses[-10:]).mean()))
        bar.close()
        seconds = time.perf_counter() - t0
        if ema is not None:
            ema.copy_to(params)  # the EMA is what is saved, served and continued from
        # each process's loss is its shard's share × world: the mean over processes is the global loss
        loss_curve = accelerator.reduce(torch.stack(losses).float(), reduction="mean").cpu()
        rank_trace = _rank_trace(accelerator, params, ema, seen)
        ranks = gather_object([{k: v for k, v in rank_trace.items() if k not in ("sample_ids", "alpha_sum")}])
        record = {
            "method": cfg.method,
            "config": asdict(cfg),
            "steps": steps,
            "samples": len(samples),
            "replay_pool": len(replay),
            "init_adapter": str(init_adapter) if init_adapter else None,
            "seconds": round(seconds, 2),
            "loss_first": float(loss_curve[: max(1, len(loss_curve) // 10)].mean()),
            "loss_last": float(loss_curve[-max(1, len(loss_curve) // 10):].mean()),
            "trainable_parameters": sum(p.numel() for p in params),
            "trainable_tensors": len(params),
            "ema": ema.stats() if ema is not None else None,
            "mixed_precision": mp,
            "num_processes": world,
            "global_batch": cfg.batch_size * cfg.grad_accum,  # samples per optimizer step, over all processes
            "per_process_batch": cfg.batch_size // world,  # per micro-batch
            "loss": "answer-token mean over the global batch",
            "ranks": ranks,
            "ranks_agree": len({(r["params_sha256"], r["alpha_sha256"]) for r in ranks}) == 1,
            "library_versions": library_versions(),
        }
        if out_dir is not None and accelerator.is_main_process:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            if shared is not None:
                shared.save_trained(TRAINING_ADAPTER, out_dir)
            else:
                peft_model.save_pretrained(out_dir)
            (out_dir / "run_record.json").write_text(json.dumps(record, indent=1))
        ema_trace = {**ema.trace(), "names": [n for n, _ in named]} if trace_ema else None
        return TuneResult(out_dir, record, ema_trace=ema_trace, rank_trace=rank_trace)
    finally:
        accelerator.free_memory()
        if shared is not None:
            shared.end_training(TRAINING_ADAPTER)  # the served adapters stay as they were
        else:
            peft_model.unload()  # removes the LoRA layers: the base model is left as it was
