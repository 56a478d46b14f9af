"""Benchmark: the LLaCA adaptive EMA update on a GPU, against the per-tensor loop and the memory bound.

Workload: the LoRA tensors of LLaVA-1.5-7B at r = 128 (32 layers × q,k,v,o,gate,up,down, A and
B: hidden 4096, intermediate 11008; 448 tensors, 0.32 B parameters), bf16 parameters and
gradients, fp32 EMA state (θ*, g₋), as `AdaptiveEMA` keeps it.

Variants (each checked or timed with CUDA events, median of --repeats after warm-up):
  loop        the released code's per-tensor loop (fp32 state): a host sync (`float(α)`) and
              several launches per tensor
  foreach     `llaca.learn.ema.AdaptiveEMA.update()` as the tuner runs it (eager foreach ops)
  foreach+graph   the same update captured once in a CUDA graph and replayed
  compiled+graph  a fused candidate: `torch.compile` of one tensor's step (one reduction
              pass for a, b, c; one pass for the blend and g₋ ← g), all 448 calls captured in
              one CUDA graph; checked against `AdaptiveEMA` before it is timed
The graph variants need gradients at fixed addresses (`zero_grad(set_to_none=False)`), so
every variant here reads static `p.grad` tensors refreshed outside the timed region.

Bytes model (per parameter, bf16 θ and g, fp32 θ* and g₋): the update must read θ (2), θ* (4),
g (2), g₋ (4) and write θ* (4) and g₋ (4): 20 B, the compulsory traffic. (The issue's 24 B
counts all six at 4 bytes.) α needs whole-tensor norms before the blend, so any schedule
reads θ and θ* twice unless a tensor stays in cache: the two-pass minimum is 26 B (pass 1
reads θ, θ*, g, g₋ and writes g₋; pass 2 reads θ, θ*, writes θ*). The eager foreach update
moves about 56 B (θ − θ* to an fp32 temporary 10, its norm 4, ‖g‖ 2, g₋ − g 10, its norm 4,
g₋ ← g 6, temp × α 8, θ* + temp 12). Bounds are reported at the nominal bandwidth (4.8 TB/s
for an H200, 3.35 for an H100 SXM) and at the bandwidth of a plain device copy measured here.

    python benchmarks/ema_gpu.py --out ema_gpu.json          # on a GPU, about 1-2 minutes
    python benchmarks/ema_gpu.py --small --out /tmp/x.json   # smoke test on CPU (dims / 16)

Needs only torch (imports llaca.learn.ema and this folder's ema_overhead, both torch-only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from ema_overhead import llava_lora_shapes  # noqa: E402

from llaca.learn.ema import FALLBACK_ALPHA, AdaptiveEMA  # noqa: E402

NOMINAL_TBPS = {"H200": 4.8, "H100": 3.35, "A100": 2.0}  # HBM bandwidth from the vendor's data sheet (SXM)
BYTES_COMPULSORY, BYTES_ISSUE, BYTES_TWO_PASS, BYTES_EAGER = 20, 24, 26, 56


# -- timing ------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], None], before: Callable[[], None], repeats: int, warmup: int,
            device: torch.device) -> dict[str, float]:
    """Median and min in ms of fn(); `before()` runs untimed ahead of each call."""
    for _ in range(warmup):
        before()
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        before()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> dict[str, float]:
    """Achieved bandwidth of dst.copy_(src) (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src), lambda: None, repeats, 3, device)
    return {"bytes": nbytes, "median_ms": t["median_ms"], "tbps": 2 * nbytes / (t["median_ms"] * 1e-3) / 1e12,
            "tbps_best": 2 * nbytes / (t["min_ms"] * 1e-3) / 1e12}


# -- the workload --------------------------------------------------------------------------------

class Workload:
    """bf16 LoRA parameters with static bf16 grads, and two grad sets alternated between steps."""

    def __init__(self, scale: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.shapes = llava_lora_shapes(scale, projector=False)

        def rand(shape, std):
            return (torch.randn(shape, generator=gen) * std).to(device=device, dtype=dtype)

        self.params = [torch.nn.Parameter(rand(s, 0.02)) for s in self.shapes]
        self.grad_sets = ([rand(s, 1e-3) for s in self.shapes], [rand(s, 1e-3) for s in self.shapes])
        for p, g in zip(self.params, self.grad_sets[0]):
            p.grad = g.clone()
        self.step = 0

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def next_grads(self) -> None:
        """New gradient values in the same tensors, and a small move of θ (an optimizer step)."""
        self.step += 1
        with torch.no_grad():
            torch._foreach_copy_([p.grad for p in self.params], self.grad_sets[self.step % 2])
            torch._foreach_add_(self.params, self.grad_sets[(self.step + 1) % 2], alpha=-1e-2)


# -- the variants --------------------------------------------------------------------------------

class LoopEMA:
    """The authors' per-tensor loop (CoIN `ema_update`), with fp32 θ* and g₋ like AdaptiveEMA."""

    def __init__(self, params):
        self.params = params
        self.ema = [p.detach().float().clone() for p in params]
        self.g_prev: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def update(self) -> None:
        for n, p in enumerate(self.params):
            theta, g = p.float(), p.grad.float()
            if self.g_prev[n] is None:
                alpha = FALLBACK_ALPHA
            else:
                a = torch.norm(theta - self.ema[n], p=1)
                b = torch.norm(g, p=1)
                c = torch.norm(g - self.g_prev[n], p=1)
                alpha = float(2 * (1 + b) / (a * c))  # the host sync of the released code
                if not 0 < alpha < 1:
                    alpha = FALLBACK_ALPHA
            self.ema[n].mul_(1 - alpha).add_(theta, alpha=alpha)
            self.g_prev[n] = g.clone()


def tensor_step(theta: torch.Tensor, g: torch.Tensor, ema: torch.Tensor, g_prev: torch.Tensor) -> torch.Tensor:
    """One tensor's adaptive step in steady state (g₋ exists), written for fusion; returns α."""
    t, gf = theta.float(), g.float()
    a = (t - ema).abs().sum()
    b = gf.abs().sum()
    c = (gf - g_prev).abs().sum()
    alpha = 2 * (1 + b) / (a * c)
    alpha = torch.where((alpha > 0) & (alpha < 1), alpha, torch.full_like(alpha, FALLBACK_ALPHA))
    ema.add_(alpha * (t - ema))
    g_prev.copy_(gf)
    return alpha


class CompiledEMA:
    """`tensor_step` compiled (one graph per distinct shape), state copied from an AdaptiveEMA."""

    def __init__(self, params, like: AdaptiveEMA):
        state = like.state_dict()
        self.params = params
        self.ema = [e.clone() for e in state["ema"]]
        self.g_prev = [g.clone() for g in state["g_prev"]]
        self.step = torch.compile(tensor_step, dynamic=False, fullgraph=True)
        self.alphas: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self) -> None:
        self.alphas = [self.step(p, p.grad, e, gp) for p, e, gp in zip(self.params, self.ema, self.g_prev)]


def graphed(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """fn captured in a CUDA graph (warmed up on a side stream first); returns the replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def check_compiled(work: Workload, device: torch.device) -> dict:
    """From the same state and gradients, the compiled step must give AdaptiveEMA's θ* and α."""
    ref = AdaptiveEMA(work.params)
    for _ in range(2):
        work.next_grads()
        ref.update()
    cand = CompiledEMA(work.params, ref)
    work.next_grads()
    ref.update()
    cand.update()
    got_alpha = torch.stack(cand.alphas).float()
    err_alpha = ((got_alpha - ref.last_alphas.to(device)).abs() / ref.last_alphas.to(device).abs()).max().item()
    err_ema = max(((c - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
                  for c, r in zip(cand.ema, ref.state_dict()["ema"]))
    same_fallbacks = bool(((got_alpha == FALLBACK_ALPHA) == (ref.last_alphas.to(device) == FALLBACK_ALPHA)).all())
    ok = err_alpha < 1e-4 and err_ema < 1e-5 and same_fallbacks
    return {"ok": ok, "max_rel_err_alpha": err_alpha, "max_rel_err_ema": err_ema, "same_fallbacks": same_fallbacks,
            "fallback_fraction": float((got_alpha == FALLBACK_ALPHA).float().mean())}


def attempt(name: str, results: dict, fn: Callable[[], dict]) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 (reported, the other variants still run)
        results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                         "traceback_tail": traceback.format_exc()[-1500:]}
    results[name]["setup_and_run_s"] = round(time.perf_counter() - t0, 1)


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON results (a .txt report is written beside it)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="dims / 16 (default on CPU): a smoke test")
    ap.add_argument("--scale", type=int, default=None, help="divide 4096/11008 by this (default 1 on GPU, 16 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 30 on GPU, 3 on CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--copy-gib", type=float, default=None, help="size of the copy-bandwidth buffer (default 2 GiB on GPU)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    scale = args.scale or (16 if (args.small or not gpu) else 1)
    repeats = args.repeats or (30 if gpu else 3)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    nominal = next((v for k, v in NOMINAL_TBPS.items() if k in name), None) if gpu else None
    work = Workload(scale, device, torch.bfloat16)
    n = work.numel
    say(f"device {name} ({device}), torch {torch.__version__}, CUDA {torch.version.cuda}")
    say(f"workload: LLaVA-1.5-7B LoRA r=128, q,k,v,o,gate,up,down x 32 layers, dims / {scale}: "
        f"{len(work.params)} tensors, {n / 1e6:.1f} M parameters, bf16 θ and g, fp32 θ* and g₋; "
        f"median of {repeats} ({'CUDA events' if gpu else 'wall clock'})")
    results: dict = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "scale": scale,
                     "tensors": len(work.params), "parameters": n, "repeats": repeats,
                     "bytes_per_param": {"compulsory": BYTES_COMPULSORY, "issue_model": BYTES_ISSUE,
                                         "two_pass_min": BYTES_TWO_PASS, "eager_foreach_est": BYTES_EAGER},
                     "nominal_tbps": nominal}

    copy_bytes = int((args.copy_gib or (2.0 if gpu else 0.25)) * 2**30)
    bw = copy_bandwidth(device, copy_bytes, 20 if gpu else 3)
    results["copy"] = bw
    say(f"plain copy of {copy_bytes / 2**30:.2f} GiB: {bw['tbps'] * 1e3:.1f} GB/s (best {bw['tbps_best'] * 1e3:.1f}); "
        f"nominal {nominal if nominal else '?'} TB/s")

    variants: dict = {}
    loop = LoopEMA(work.params)
    lib = AdaptiveEMA(work.params)
    for _ in range(2):  # steady state: θ* and g₋ exist
        work.next_grads()
        loop.update()
        lib.update()
    attempt("loop", variants, lambda: time_ms(loop.update, work.next_grads, max(5, repeats // 3), 1, device))
    attempt("foreach", variants, lambda: time_ms(lib.update, work.next_grads, repeats, 3, device))
    if gpu:
        attempt("foreach+graph", variants,
                lambda: time_ms(graphed(lib.update, device), work.next_grads, repeats, 3, device))
    if not args.no_compile:
        def compiled() -> dict:
            check = check_compiled(work, device)
            cand = CompiledEMA(work.params, lib)
            t0 = time.perf_counter()
            cand.update()  # compiles (one graph per shape)
            sync(device)
            compile_s = time.perf_counter() - t0
            out = {"check": check, "compile_s": round(compile_s, 1)}
            out.update(time_ms(cand.update, work.next_grads, max(5, repeats // 3), 1, device))
            if gpu:
                out["graph"] = time_ms(graphed(cand.update, device), work.next_grads, repeats, 3, device)
            return out
        attempt("compiled", variants, compiled)
    results["variants"] = variants

    def bound_ms(bytes_per_param: int, tbps: float | None) -> float | None:
        return None if not tbps else bytes_per_param * n / (tbps * 1e12) * 1e3

    bounds = {f"{b}B@{label}": bound_ms(b, tbps) for b in (BYTES_COMPULSORY, BYTES_ISSUE, BYTES_TWO_PASS)
              for label, tbps in (("nominal", nominal), ("copy", bw["tbps"]))}
    results["bounds_ms"] = bounds
    ref_bound = bounds[f"{BYTES_COMPULSORY}B@copy"]
    say()
    say(f"bounds for {n / 1e6:.0f} M params: 20 B/param {bounds['20B@copy']:.3f} ms at the measured copy bandwidth"
        + (f", {bounds['20B@nominal']:.3f} ms at {nominal} TB/s nominal" if nominal else "")
        + f"; the issue's 24 B/param: {bounds['24B@copy']:.3f} ms (copy)"
        + (f", {bounds['24B@nominal']:.3f} ms (nominal)" if nominal else ""))
    say(f"{'variant':<28}{'median ms':>11}{'vs loop':>9}{'x 20B bound':>13}{'eff. GB/s (20B)':>17}")
    loop_ms = variants.get("loop", {}).get("median_ms")
    rows = [("loop", "per-tensor loop", variants.get("loop", {})),
            ("foreach", "foreach (AdaptiveEMA)", variants.get("foreach", {})),
            ("foreach+graph", "foreach + CUDA graph", variants.get("foreach+graph", {})),
            ("compiled", "compiled", variants.get("compiled", {})),
            ("compiled+graph", "compiled + CUDA graph", variants.get("compiled", {}).get("graph", {}))]
    summary = {}
    for key, label, v in rows:
        if not v:
            continue
        if "median_ms" not in v:
            say(f"{label:<28}  failed: {v.get('error', '?')}")
            continue
        ms = v["median_ms"]
        speedup = loop_ms / ms if loop_ms else float("nan")
        summary[key] = {"ms": ms, "speedup_vs_loop": speedup, "x_bound_20B_copy": ms / ref_bound,
                          "effective_tbps_20B": BYTES_COMPULSORY * n / (ms * 1e-3) / 1e12}
        say(f"{label:<28}{ms:>11.3f}{speedup:>9.2f}{ms / ref_bound:>13.2f}{summary[key]['effective_tbps_20B'] * 1e3:>17.1f}")
    results["summary"] = summary
    if "compiled" in variants and "check" in variants["compiled"]:
        c = variants["compiled"]["check"]
        say(f"compiled step vs AdaptiveEMA: {'OK' if c['ok'] else 'MISMATCH'} (max rel err α {c['max_rel_err_alpha']:.1e}, "
            f"θ* {c['max_rel_err_ema']:.1e}, same fallbacks {c['same_fallbacks']}), "
            f"compile {variants['compiled'].get('compile_s')} s")
    if "foreach" in summary:
        f = summary["foreach"]
        say(f"targets: foreach ≥ 3x the loop: {f['speedup_vs_loop']:.2f}x; within 2x of the 20 B/param bound at the "
            f"copy bandwidth: {f['x_bound_20B_copy']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    say(f"wrote {args.out} and {args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
