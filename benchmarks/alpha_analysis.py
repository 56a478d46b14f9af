"""The α analysis: where the released LLaCA rule operates at our tensor sizes and at LLaVA-7B's.

    python benchmarks/alpha_analysis.py [--model models/llava-tiny] [--steps 200] [--out DIR]

What it does (outputs in --out, default benchmarks/out/alpha: alpha.json, alpha.md, alpha.png;
the tables are printed too):

  (a) One `llaca` tuning run through `llaca.learn.tuner.tune` (TuneConfig defaults: batch 16, lr 1e-3,
      LoRA r 16; --steps, default 200) on a continual family (default `count`, 400 samples) with
      the EMA trace on: per update and tensor the rule's a = ‖θ − θ*‖₁, b = ‖g‖₁,
      c = ‖g − g₋‖₁ and α = 2(1 + b)/(a·c). Reported per tensor size: fallback rate (α ∉ (0, 1)
      → 0.01), α quantiles overall and in range, per-element means ā = a/n, b̄ = b/n, c̄ = c/n,
      the crossover size n*, and the weight θ* still gives its starting point at the end,
      Π(1 − α); and per window of steps: fallback rate and median α.
  (b) Projection: each measured tensor-step's (ā, b̄, c̄) put into LLaVA-1.5-7B's r = 128 LoRA
      sizes, n = 128·4096 = 524,288 (q/k/v/o, gate/up A, down B) and 128·11008 = 1,409,024
      (gate/up B, down A): α_7B = 2(1 + n·b̄)/(n·ā · n·c̄).
  (c) Simulation: the (θ, g) trajectories of a few recorded tensors replayed through the real
      `AdaptiveEMA` on 7B-shaped tensors (every large-tensor element follows one recorded
      element), so θ* evolves under the large tensor's own α; this checks (b), which keeps the
      small run's θ*.

(d) Why the regimes differ. Per element, α(n) = 2(1 + n·b̄)/(n²·ā·c̄): the L1 norms grow with the
element count n, so α falls as 1/n² while n·b̄ < 1 and as 2·b̄/(n·ā·c̄) ~ 1/n beyond; it is
below 1 only above n* = (b̄ + sqrt(b̄² + 2·ā·c̄))/(ā·c̄). With the tiny model's statistics
(ā ~ 1e-3, b̄ ~ 4e-4, c̄ ~ 2e-4) n* is a few thousand elements, the size of its own LoRA tensors,
so α straddles 1: most tensor-steps have α > 1 and take the fallback (a fixed 0.99 EMA), and the
rest get an in-range α of 0.5-1 that pulls θ* most of the way to θ. Those jumps come often
enough that θ* follows θ within a few steps (start weight ≈ 0): at this scale the rule is
closer to no averaging than to a 0.99 EMA. At 7B sizes n is ~100× n*: α is always in range and
≈ 2·b̄/(n·ā·c̄) ~ 1e-3, below the fallback's 0.01, an always-on, very slow EMA; slower still in
practice, because a θ* that lags more raises ā (part c's simulated α is a few times below the
projection). Built for tasks of thousands of steps, it leaves θ* close to where it started
after the ~80 steps that a buffer of a few dozen corrections gets (start weight near 1): the
served adapter (θ*) would learn little from them.

Per-element statistics are held fixed across scales (as the analysis asks); a real 7B run has
its own (lr 2e-4 in LLaVA's recipe, other gradient scales), which moves n* but not the n-scaling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.alpha_report import figure, markdown  # noqa: E402
from llaca.bench.alpha_stats import (  # noqa: E402
    applied,
    crossover_numel,
    project,
    quantiles,
    replay_at_shape,
    start_weight,
    summarize,
)
from llaca.learn.ema import FALLBACK_ALPHA  # noqa: E402

RANK_7B, HIDDEN_7B, INTERMEDIATE_7B = 128, 4096, 11008
SHAPES_7B = {  # LLaVA-1.5-7B (Vicuna-7B) LoRA r = 128 on q/k/v/o/gate/up/down
    "A": [(RANK_7B, HIDDEN_7B), (RANK_7B, INTERMEDIATE_7B)],  # A of q..up, A of down
    "B": [(HIDDEN_7B, RANK_7B), (INTERMEDIATE_7B, RANK_7B)],  # B of q..o and down, B of gate/up
}
SIZES_7B = sorted({r * c for shapes in SHAPES_7B.values() for r, c in shapes})


# -- (a) the traced run ---------------------------------------------------------------------------

class TrajectoryRecorder:
    """Copies (θ, g) of chosen trainable tensors after every optimizer step (a global post-step
    hook, so the tuner is untouched); these are exactly what the EMA update then reads."""

    def __init__(self, positions: list[int]):
        self.positions = positions
        self.thetas: dict[int, list[torch.Tensor]] = {i: [] for i in positions}
        self.grads: dict[int, list[torch.Tensor]] = {i: [] for i in positions}
        self._handle = None

    def __enter__(self) -> "TrajectoryRecorder":
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, optimizer, _args, _kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i in self.positions:
            self.thetas[i].append(params[i].detach().float().flatten().clone())
            self.grads[i].append(params[i].grad.detach().float().flatten().clone())


def lora_kind(name: str) -> str:
    """'A' or 'B' for a LoRA factor, 'other' for anything else (e.g. a trained projector)."""
    return "A" if ".lora_A." in name else "B" if ".lora_B." in name else "other"


def pick_sources(names: list[str], per_kind: int) -> list[int]:
    """Up to `per_kind` LoRA A and B tensors, spread evenly over the model's layers."""
    chosen: list[int] = []
    for kind in ("A", "B"):
        idx = [i for i, n in enumerate(names) if lora_kind(n) == kind]
        if idx and per_kind > 0:
            k = min(per_kind, len(idx))
            chosen += [idx[round(j * (len(idx) - 1) / max(1, k - 1))] for j in range(k)]
    return sorted(set(chosen))


def trainable_names(model, cfg) -> list[str]:
    """The trainable tensor names `tune` will create, in order (dry LoRA injection)."""
    from llaca.learn.tuner import _lora_model

    peft_model = _lora_model(model, cfg, None)
    try:
        return [n for n, p in peft_model.named_parameters() if p.requires_grad]
    finally:
        peft_model.unload()


def traced_run(args) -> tuple[dict, TrajectoryRecorder, dict]:
    """The tuning run of part (a): returns the EMA trace, the recorded trajectories, run info."""
    from llaca.learn.tuner import TuneConfig, tune
    from llaca.model.llava import load_model
    from llaca.world.heldout import heldout

    lm = load_model(args.model, device="cpu")
    samples = heldout(args.family, args.samples, seed=args.data_seed)
    cfg = TuneConfig(method="llaca", seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    names = trainable_names(lm.model, cfg)
    recorder = TrajectoryRecorder(pick_sources(names, args.sim_sources))
    t0, c0 = time.perf_counter(), time.process_time()
    with recorder:
        result = tune(lm.model, lm.processor, samples, cfg, trace_ema=True)
    trace = result.ema_trace
    if trace["names"] != names:
        raise RuntimeError("the trainable tensors differ from the dry run's; cannot match sources")
    info = {"model": str(args.model), "family": args.family, "samples": len(samples),
            "steps": result.record["steps"], "batch_size": cfg.batch_size, "lr": cfg.lr,
            "lora_r": cfg.lora_r, "seed": cfg.seed, "tune_seconds": round(time.perf_counter() - t0, 1),
            "tune_cpu_seconds": round(time.process_time() - c0, 1),
            "loss_first": result.record["loss_first"], "loss_last": result.record["loss_last"]}
    return trace, recorder, info


# -- (a), (b) tables --------------------------------------------------------------------------------

@dataclass
class Measured:
    """The traced run as arrays [updates, tensors], with per-element means and validity."""

    raw: torch.Tensor
    alpha: torch.Tensor
    a_bar: torch.Tensor
    b_bar: torch.Tensor
    c_bar: torch.Tensor
    valid: torch.Tensor  # the rule had a, b and c (not the first update, grad present)
    numel: torch.Tensor
    shapes: list[str]

    @classmethod
    def from_trace(cls, trace: dict, shapes: list[str]) -> "Measured":
        n = trace["numel"].to(torch.float64)
        valid = torch.isfinite(trace["b"]) & torch.isfinite(trace["c"])
        return cls(trace["alpha_raw"], trace["alpha"], trace["a"] / n, trace["b"] / n, trace["c"] / n,
                   valid, trace["numel"], shapes)


def row(label: str, raw: torch.Tensor, valid: torch.Tensor, alpha_all: torch.Tensor,
        a_bar=None, b_bar=None, c_bar=None, tensors: int | None = None) -> dict:
    """One table row: `raw`/`valid` over tensor-steps, `alpha_all` [updates, tensors] applied α
    over every update (for the start weight)."""
    out = {"label": label, "tensors": tensors if tensors is not None else alpha_all.shape[1],
           **summarize(raw, valid),
           "start_weight_median": quantiles(start_weight(alpha_all), (0.5,))[0]}
    if a_bar is not None:
        out["per_element_median_a_b_c"] = [quantiles(x[valid], (0.5,))[0] for x in (a_bar, b_bar, c_bar)]
        out["crossover_numel_median"] = quantiles(crossover_numel(a_bar, b_bar, c_bar)[valid], (0.5,))[0]
    return out


def size_table(m: Measured) -> list[dict]:
    """Part (a) per tensor size, then part (b): the same per-element values at 7B sizes."""
    rows = []
    for n in sorted(set(m.numel.tolist())):
        cols = m.numel == n
        shapes = sorted({s for s, k in zip(m.shapes, cols.tolist()) if k})
        rows.append(row(f"tiny n={n:,} ({', '.join(shapes)})", m.raw[:, cols], m.valid[:, cols],
                        m.alpha[:, cols], m.a_bar[:, cols], m.b_bar[:, cols], m.c_bar[:, cols]))
    rows.append(row("tiny, all tensors", m.raw, m.valid, m.alpha, m.a_bar, m.b_bar, m.c_bar))
    for n in SIZES_7B:
        raw = project(m.a_bar, m.b_bar, m.c_bar, n)
        alpha_all = applied(raw)[0].masked_fill(~m.valid, FALLBACK_ALPHA)
        rows.append(row(f"7B-sized n={n:,}, projected", raw, m.valid, alpha_all))
    return rows


def step_windows(m: Measured, windows: int, sims: list[dict]) -> list[dict]:
    """Fallback rate and median α per window of steps: tiny, projected 7B and simulated 7B."""
    steps = m.raw.shape[0]
    bounds = [round(k * steps / windows) for k in range(windows + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        if hi <= lo:
            continue
        sl = slice(lo, hi)
        v = m.valid[sl]
        tiny = summarize(m.raw[sl], v)
        proj = summarize(project(m.a_bar[sl], m.b_bar[sl], m.c_bar[sl], SIZES_7B[0]), v)
        sim_raw = [s["alpha_raw"][sl] for s in sims if s["numel"] == SIZES_7B[0]]
        sim = summarize(torch.cat(sim_raw, 1), torch.isfinite(torch.cat(sim_raw, 1))) if sim_raw else None
        out.append({"steps": f"{lo + 1}-{hi}", "tiny_fallback_rate": tiny["fallback_rate"],
                    "tiny_alpha_raw_median": tiny["alpha_raw_q10_50_90"][1],
                    "tiny_alpha_in_range_median": tiny["alpha_in_range_q10_50_90"][1],
                    "crossover_numel_median": quantiles(crossover_numel(m.a_bar[sl], m.b_bar[sl], m.c_bar[sl])[v], (0.5,))[0],
                    "proj7b_fallback_rate": proj["fallback_rate"],
                    "proj7b_alpha_median": proj["alpha_raw_q10_50_90"][1],
                    "sim7b_fallback_rate": sim["fallback_rate"] if sim else None,
                    "sim7b_alpha_median": sim["alpha_raw_q10_50_90"][1] if sim else None})
    return out


# -- (c) simulation --------------------------------------------------------------------------------

def simulate(recorder: TrajectoryRecorder, names: list[str], seed: int) -> list[dict]:
    """Replay each recorded tensor at both 7B shapes of its LoRA factor (part c)."""
    sims = []
    for i in recorder.positions:
        for shape in SHAPES_7B.get(lora_kind(names[i]), []):
            tr = replay_at_shape(recorder.thetas[i], recorder.grads[i], shape, seed=seed + i)
            sims.append({"source": names[i], "shape": shape, "numel": shape[0] * shape[1],
                         "alpha_raw": tr["alpha_raw"], "alpha": tr["alpha"],
                         "valid": torch.isfinite(tr["b"]) & torch.isfinite(tr["c"])})
    return sims


def sim_rows(sims: list[dict]) -> list[dict]:
    rows = []
    for n in SIZES_7B:
        group = [s for s in sims if s["numel"] == n]
        if group:
            shapes = sorted({f"{s['shape'][0]}×{s['shape'][1]}" for s in group})
            rows.append(row(f"7B-shaped n={n:,}, simulated ({', '.join(shapes)})",
                            torch.cat([s["alpha_raw"] for s in group], 1),
                            torch.cat([s["valid"] for s in group], 1),
                            torch.cat([s["alpha"] for s in group], 1)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--family", default="count")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--data-seed", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: TuneConfig's, 200)")
    ap.add_argument("--windows", type=int, default=5, help="step windows in the over-training table")
    ap.add_argument("--sim-sources", type=int, default=2,
                    help="recorded LoRA A and B tensors each replayed at 7B shapes (0: no simulation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/alpha"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    trace, recorder, info = traced_run(args)
    names = trace["names"]
    if any(len(v) != info["steps"] for v in recorder.thetas.values()):
        raise RuntimeError("recorded trajectories do not have one entry per optimizer step")
    m = Measured.from_trace(trace, ["×".join(map(str, s)) for s in trace["shapes"]])
    t0 = time.process_time()
    sims = simulate(recorder, names, args.seed)
    info["simulation_cpu_seconds"] = round(time.process_time() - t0, 1)
    sizes = size_table(m) + sim_rows(sims)
    windows = step_windows(m, args.windows, sims)
    table = markdown(info, sizes, windows, SIZES_7B)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alpha.md").write_text(table)
    (args.out / "alpha.json").write_text(json.dumps(
        {"run": info, "sizes": sizes, "windows": windows, "sizes_7b": SIZES_7B,
         "sim_sources": [names[i] for i in recorder.positions]}, indent=1))
    figure(m, sims, SIZES_7B, args.out / "alpha.png")
    print(f"wrote {args.out}/alpha.md, alpha.json, alpha.png; run: {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
