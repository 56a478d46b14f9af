"""The output of `benchmarks/alpha_analysis.py`: its tables as Markdown and its figure.

`markdown` writes the per-tensor-size table (tiny measured, 7B projected and simulated) and the
over-training table (per window of steps); `figure` draws alpha.png: the α CDF per tensor size,
the median α over training and the fallback rate over training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llaca.bench.alpha_stats import applied, project, quantiles
from llaca.learn.ema import FALLBACK_ALPHA

if TYPE_CHECKING:
    from benchmarks.alpha_analysis import Measured


def fmt(x, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def markdown(info: dict, sizes: list[dict], windows: list[dict], sizes_7b: list[int]) -> str:
    """The two tables as Markdown (`sizes_7b`: the 7B tensor sizes, the first one in the windows table)."""
    lines = [f"α of the released LLaCA rule: `{info['family']}`, {info['steps']} steps, batch "
             f"{info['batch_size']}, lr {info['lr']:g}, LoRA r {info['lora_r']}, model `{info['model']}`.",
             "Tensor-steps where the rule applies (from each tensor's second update); the first update "
             "always takes the fallback.", "",
             "| tensors | count | fallback | α p10 / p50 / p90 | in-range α p10 / p50 / p90 | "
             "median ā, b̄, c̄ per element | median n* | start weight Π(1−α) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sizes:
        q, qi = r["alpha_raw_q10_50_90"], r["alpha_in_range_q10_50_90"]
        abc = ", ".join(fmt(x, ".2g") for x in r["per_element_median_a_b_c"]) if "per_element_median_a_b_c" in r else "(as tiny)"
        lines.append(f"| {r['label']} | {r['count']:,} | {fmt(100 * r['fallback_rate'], '.0f')}% | "
                     f"{' / '.join(fmt(x) for x in q)} | {' / '.join(fmt(x) for x in qi)} | {abc} | "
                     f"{fmt(r.get('crossover_numel_median'), ',.0f')} | {fmt(r['start_weight_median'], '.2g')} |")
    lines += ["", f"Over training (7B: n = {sizes_7b[0]:,}):", "",
              "| steps | tiny fallback | tiny median α | tiny in-range median α | median n* | "
              "7B projected fallback | 7B projected median α | 7B simulated fallback | 7B simulated median α |",
              "|---|---|---|---|---|---|---|---|---|"]
    for w in windows:
        pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
        lines.append(f"| {w['steps']} | {pct(w['tiny_fallback_rate'])} | {fmt(w['tiny_alpha_raw_median'])} | "
                     f"{fmt(w['tiny_alpha_in_range_median'])} | {fmt(w['crossover_numel_median'], ',.0f')} | "
                     f"{pct(w['proj7b_fallback_rate'])} | {fmt(w['proj7b_alpha_median'])} | "
                     f"{pct(w['sim7b_fallback_rate'])} | {fmt(w['sim7b_alpha_median'])} |")
    return "\n".join(lines) + "\n"


def figure(m: Measured, sims: list[dict], sizes_7b: list[int], path: Path) -> None:
    """alpha.png: α CDF per tensor size (tiny, 7B projected, 7B simulated); α and fallback over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))

    def cdf(ax, x, **kw):
        x = x[torch.isfinite(x) & (x > 0)].sort().values
        if x.numel():
            ax.plot(x.numpy(), (torch.arange(1, x.numel() + 1) / x.numel()).numpy(), **kw)

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, n in enumerate(sorted(set(m.numel.tolist()))):
        cols = m.numel == n
        cdf(ax1, m.raw[:, cols][m.valid[:, cols]], color=colors[k], label=f"tiny n={n:,}")
    for k, n in enumerate(sizes_7b):
        c = colors[(k + 3) % len(colors)]
        cdf(ax1, project(m.a_bar, m.b_bar, m.c_bar, n)[m.valid], color=c, label=f"7B n={n:,} projected")
        group = [s for s in sims if s["numel"] == n]
        if group:
            cdf(ax1, torch.cat([s["alpha_raw"][s["valid"]] for s in group]), color=c, ls="--",
                label=f"7B n={n:,} simulated")
    ax1.axvspan(0, 1, color="0.92", zorder=0)
    ax1.axvline(FALLBACK_ALPHA, color="k", lw=0.8, ls=":")
    ax1.set(xscale="log", xlabel="raw α = 2(1+b)/(a·c)  (shaded: in range; dotted: fallback 0.01)",
            ylabel="CDF over tensor-steps", title="α per tensor size")
    ax1.legend(fontsize=7)

    steps = torch.arange(1, m.raw.shape[0] + 1).numpy()
    window = max(1, len(steps) // 20)

    def over_steps(label, raw, valid, **kw):
        """Median raw α (ax2) and fallback rate, averaged over `window` steps (ax3), per step."""
        med = [quantiles(raw[t][valid[t]], (0.5,))[0] for t in range(raw.shape[0])]
        ax2.plot(steps, [float("nan") if x is None else x for x in med], label=label, **kw)
        counts = valid.double().sum(1)
        fb = (applied(raw)[1] & valid).double().sum(1) / counts
        fb = torch.where(counts > 0, fb, torch.nan)
        kernel = torch.ones(window, dtype=torch.float64)
        ok = torch.isfinite(fb)
        num = torch.nn.functional.conv1d(torch.where(ok, fb, 0)[None, None], kernel[None, None])[0, 0]
        den = torch.nn.functional.conv1d(ok.double()[None, None], kernel[None, None])[0, 0]
        ax3.plot(steps[window - 1:], (num / den).numpy(), label=label, **kw)

    for k, n in enumerate(sorted(set(m.numel.tolist()))):
        cols = m.numel == n
        over_steps(f"tiny n={n:,}", m.raw[:, cols], m.valid[:, cols], color=colors[k])
    for k, n in enumerate(sizes_7b):
        c = colors[(k + 3) % len(colors)]
        over_steps(f"7B n={n:,} projected", project(m.a_bar, m.b_bar, m.c_bar, n), m.valid, color=c)
        group = [s for s in sims if s["numel"] == n]
        if group:
            over_steps(f"7B n={n:,} simulated", torch.cat([s["alpha_raw"] for s in group], 1),
                       torch.cat([s["valid"] for s in group], 1), color=c, ls="--")
    ax2.axhline(1, color="k", lw=0.8)
    ax2.axhline(FALLBACK_ALPHA, color="k", lw=0.8, ls=":")
    ax2.set(yscale="log", xlabel="optimizer step", ylabel="median raw α over tensors",
            title="α over training")
    ax2.legend(fontsize=7)
    ax3.set(ylim=(-0.02, 1.02), xlabel="optimizer step",
            ylabel=f"fallback rate (mean over {window} steps)", title="fallback (α ∉ (0, 1)) over training")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
