"""Benchmark: cost of the LLaCA adaptive EMA update.

Measures, on synthetic tensors shaped like the trainable set of LLaVA-1.5-7B with rank-128
LoRA on every LLM linear layer plus the two-layer projector (452 tensors, ~0.34 B parameters
at --scale 1; --scale k divides the model dimensions by k, keeping the tensor count and rank):

  (a) `AdaptiveEMA.update()` (foreach ops, no host sync) against the released code's loop
      (one tensor at a time, `float()` per tensor, fresh tensors per step);
  (b) one `AdamW.step()` with and without the adaptive (and the fixed) EMA update.

Timings are medians over --repeats runs after warm-up, with the variants interleaved so a
noisy machine slows them alike. Run: python benchmarks/ema_overhead.py --scale 4 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llaca.learn.ema import AdaptiveEMA, FixedEMA, default_chunk_numel  # noqa: E402

HIDDEN, INTERMEDIATE, VISION, LAYERS, RANK = 4096, 11008, 1024, 32, 128


@dataclass
class Workload:
    params: list[torch.nn.Parameter]
    grad_sets: tuple[list[torch.Tensor], list[torch.Tensor]]  # alternated so g changes per step
    scale: int

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def set_grads(self, k: int) -> None:
        for p, g in zip(self.params, self.grad_sets[k % 2]):
            p.grad = g


def llava_lora_shapes(scale: int = 1, rank: int = RANK, projector: bool = True) -> list[tuple[int, ...]]:
    """LoRA A (r×in) and B (out×r) for q,k,v,o,gate,up,down in each layer, then the projector."""
    h, i, v = HIDDEN // scale, INTERMEDIATE // scale, VISION // scale
    projections = [(h, h)] * 4 + [(h, i), (h, i), (i, h)]  # (in, out)
    shapes: list[tuple[int, ...]] = []
    for _ in range(LAYERS):
        for fan_in, fan_out in projections:
            shapes += [(rank, fan_in), (fan_out, rank)]
    if projector:
        shapes += [(h, v), (h,), (h, h), (h,)]  # mm_projector: Linear(v→h), GELU, Linear(h→h)
    return shapes


def make_workload(scale: int, device: torch.device, dtype: torch.dtype, rank: int = RANK,
                  seed: int = 0) -> Workload:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = llava_lora_shapes(scale, rank)

    def rand(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std).to(device=device, dtype=dtype)

    params = [torch.nn.Parameter(rand(s, 0.02)) for s in shapes]
    grads = ([rand(s, 1e-3) for s in shapes], [rand(s, 1e-3) for s in shapes])
    return Workload(params=params, grad_sets=grads, scale=scale)


def released_loop_update(ema: dict[int, torch.Tensor], g_prev: dict[int, torch.Tensor],
                         params: list[torch.nn.Parameter]) -> None:
    """The authors' per-tensor loop (CoIN `ema_update`): a host sync (`float()`) per tensor."""
    with torch.no_grad():
        for n, p in enumerate(params):
            if n not in ema:
                ema[n] = p.detach().clone()
            g = p.grad
            try:
                a = torch.norm(p - ema[n], p=1)
                b = torch.norm(g, p=1)
                c = torch.norm(g - g_prev[n], p=1)
                alpha = float(2 * (1 + b) / (a * c))
                if not 0 < alpha < 1:
                    alpha = 0.01
                ema[n] = (1 - alpha) * ema[n] + alpha * p
            except Exception:  # noqa: BLE001  (the released code's bare except)
                ema[n] = 0.99 * ema[n] + 0.01 * p
            g_prev[n] = g.clone()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[int], None]], repeats: int, warmup: int,
                        device: torch.device) -> dict[str, float]:
    """Median wall time in ms of each fn(step), the fns run round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn(step)
            _sync(device)
            if step >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_ema_update(work: Workload, repeats: int, warmup: int, device: torch.device,
                       chunk_numel: int | None = None) -> dict[str, float]:
    """(a) Vectorised AdaptiveEMA.update() versus the released per-tensor loop."""
    ema = AdaptiveEMA(work.params, chunk_numel=chunk_numel)
    ref_ema: dict[int, torch.Tensor] = {}
    ref_prev: dict[int, torch.Tensor] = {}
    for k in range(2):  # create θ* and g₋ in both, so the timed steps are steady state
        work.set_grads(k)
        ema.update()
        released_loop_update(ref_ema, ref_prev, work.params)

    def vectorised(step: int) -> None:
        work.set_grads(step)
        ema.update()

    def loop(step: int) -> None:
        work.set_grads(step)
        released_loop_update(ref_ema, ref_prev, work.params)

    result = interleaved_medians({"vectorised": vectorised, "loop": loop}, repeats, warmup, device)
    result["fallback_fraction"] = ema.stats()["fallback_fraction"]
    return result


def measure_optimizer_step(work: Workload, repeats: int, warmup: int, device: torch.device,
                           chunk_numel: int | None = None) -> dict[str, float]:
    """(b) AdamW.step() alone, then followed by the adaptive or the fixed EMA update."""
    opt = torch.optim.AdamW(work.params, lr=2e-4, weight_decay=0.0)
    adaptive = AdaptiveEMA(work.params, chunk_numel=chunk_numel)
    fixed = FixedEMA(work.params, chunk_numel=chunk_numel)

    def step_only(step: int) -> None:
        work.set_grads(step)
        opt.step()

    def step_adaptive(step: int) -> None:
        work.set_grads(step)
        opt.step()
        adaptive.update()

    def step_fixed(step: int) -> None:
        work.set_grads(step)
        opt.step()
        fixed.update()

    return interleaved_medians({"adamw": step_only, "adamw+adaptive": step_adaptive,
                                "adamw+fixed": step_fixed}, repeats, warmup, device)


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    print(f"  {'variant'.ljust(width)}  {'median ms':>10}  {'ratio':>8}")
    for name, ms, ratio in rows:
        print(f"  {name.ljust(width)}  {ms:>10}  {ratio:>8}")


def measure_tiny_training_step(model_path: str, repeats: int, warmup: int, batch: int = 16) -> dict[str, float]:
    """(c) One whole LoRA training step (forward, backward, AdamW, EMA) on the embedded tiny
    LLaVA, `seq` against `llaca`, same batch, interleaved. Batch encoding is excluded (it is
    the same for both), which makes the ratio stricter."""
    from peft import LoraConfig, get_peft_model

    from llaca.learn.ema import AdaptiveEMA
    from llaca.learn.encoding import answer_loss, encode_supervised
    from llaca.learn.tuner import LM_TARGETS
    from llaca.model.llava import load_model
    from llaca.world.heldout import heldout

    lm = load_model(model_path, device="cpu")
    model = get_peft_model(lm.model, LoraConfig(r=16, lora_alpha=32, target_modules=LM_TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    data = encode_supervised(lm.processor, heldout("position", batch, seed=1))
    opt = torch.optim.AdamW(params, lr=1e-4)
    ema = AdaptiveEMA(params)

    def step(with_ema: bool) -> None:
        loss = answer_loss(model, data)
        loss.backward()
        opt.step()
        if with_ema:
            ema.update()
        opt.zero_grad(set_to_none=True)

    return interleaved_medians({"seq": lambda i: step(False), "llaca": lambda i: step(True)}, repeats, warmup,
                               torch.device("cpu"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=4,
                    help="divide the LLaVA-7B dims (4096/11008/1024) by this; 1 = full size")
    ap.add_argument("--rank", type=int, default=RANK, help="LoRA rank (not scaled)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per variant first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch intra-op threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="parameter dtype (the EMA copy is fp32 either way)")
    ap.add_argument("--chunk-numel", type=int, default=None,
                    help="EMA foreach group size in elements (default: llaca.learn.ema's per device)")
    ap.add_argument("--skip-optimizer", action="store_true", help="skip measurement (b)")
    ap.add_argument("--tiny-model", default="models/llava-tiny", help="model for measurement (c); '' skips it")
    ap.add_argument("--tiny-repeats", type=int, default=40, help="timed training steps per method for (c)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    work = make_workload(args.scale, device, dtype, args.rank)
    mib = work.numel * 4 / 2**20
    print(f"workload: LLaVA-1.5-7B LoRA r={args.rank} + projector, dims / {args.scale}: "
          f"{len(work.params)} tensors, {work.numel / 1e6:.1f} M params ({args.dtype}); "
          f"EMA state (θ* + g₋, fp32) {2 * mib:.0f} MiB")
    chunk = args.chunk_numel or default_chunk_numel(device)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"EMA group size {chunk} elements; median of {args.repeats} after {args.warmup} "
          f"warm-up, variants interleaved")

    ema = measure_ema_update(work, args.repeats, args.warmup, device, args.chunk_numel)
    print_table("(a) EMA update, all tensors", [
        ("AdaptiveEMA.update (foreach)", f"{ema['vectorised']:.1f}", "1.00"),
        ("released per-tensor loop", f"{ema['loop']:.1f}", f"{ema['loop'] / ema['vectorised']:.2f}"),
    ])
    print(f"  speed-up of the vectorised update: {ema['loop'] / ema['vectorised']:.2f}x "
          f"(fallback fraction in these steps {ema['fallback_fraction']:.2f})")

    if not args.skip_optimizer:
        opt = measure_optimizer_step(work, args.repeats, args.warmup, device, args.chunk_numel)
        base = opt["adamw"]
        print_table("(b) one optimizer step", [
            (name, f"{ms:.1f}", f"{ms / base:.2f}") for name, ms in opt.items()
        ])
        print(f"  adaptive EMA overhead: +{100 * (opt['adamw+adaptive'] / base - 1):.0f}% "
              f"of an AdamW step; fixed EMA: +{100 * (opt['adamw+fixed'] / base - 1):.0f}%")

    if args.tiny_model:
        tiny = measure_tiny_training_step(args.tiny_model, args.tiny_repeats, 5)
        print_table("(c) one LoRA training step on the tiny LLaVA (r=16, batch 16)", [
            ("seq", f"{tiny['seq']:.1f}", "1.00"),
            ("llaca (adaptive EMA)", f"{tiny['llaca']:.1f}", f"{tiny['llaca'] / tiny['seq']:.2f}"),
        ])
        print(f"  llaca adds {100 * (tiny['llaca'] / tiny['seq'] - 1):+.1f}% to a training step (target: at most +10%)")


if __name__ == "__main__":
    main()
