"""GPU check: the real serving and in-app learning path on LLaVA-1.5-7B's geometry, random weights.

No download: `llaca.model.random_llava` builds a random LLaVA-1.5 with llava-1.5-7b-hf's exact shapes
(`--scale full`, 7.06 B parameters, bf16 on the GPU) or its narrow, shallow twin (`--scale
small`, seconds on a CPU), directly on the device. Four random LoRA group adapters (r=16 on
the text model's q/k/v/o/gate/up/down projections, `llaca.learn.tuner.LM_TARGETS`) make a routed
version (`llaca.bench.random_adapters.routed_system`). Then, on one `SharedModel`:

1. serving: `BatchedAssistant` (max batch 16) routed over the 4 groups, greedy answers of
   `--max-new-tokens` to questions of the 4 groups in turn, from 1, 8 and 16 concurrent streams
   (threads). Per level: TTFT p50/p95 (question asked -> first token sampled, the batcher's own
   timestamp; also to the first streamed text), aggregate tokens/s (tokens counted from the
   batcher: one per answer at prefill + one per row per decode step, over the level's wall time);
   random weights rarely emit EOS, so answers run to the budget (checked: `tokens_expected`).
2. training while serving: one in-app training round as the worker runs it, on the shared model
   (`tune(..., shared=)`): 8 corrections (336 px random images, short questions and answers)
   plus 8 replayed ones, TuneConfig(method="llaca+replay", lr=3e-4 (`WorkerConfig`), batch 8,
   steps 80 at full scale (the app's learn_steps), 4 at small), continuing the "color" group's
   adapter, while 8 streams keep asking. Reported: mean seconds per optimizer step (the run
   record's seconds / steps; and the steady rate between progress callbacks), the adaptive EMA
   update on the trained adapter's tensors (timed alone after the run: N calls, synchronised),
   and the answers served meanwhile.
3. swap: the trained adapter replaces the group's in a new routed version v2 (as a promotion
   does); time from the swap to the first token and to the end of the first answer on v2 for
   that group, which loads the new adapter (a miss: `SharedModel.loads` + 1).

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` (reset between phases) for
serving alone and for serving plus training, and `fits_24gb` / `fits_48gb`: that peak plus a
margin for the CUDA context (`--context-margin-gib`, 1.5) under 24 / 48 GiB. On CPU the memory
fields are the process's peak RSS during the phase (Linux VmHWM, reset at the phase's start;
`memory_kind` says which); `fits_*` are then null.

    python benchmarks/gpu_check.py                      # full scale on the GPU; a few minutes on an H200
    python benchmarks/gpu_check.py --scale small --device cpu --threads 1 --out /tmp/gpu_check.json  # ~15 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULTS = {  # per scale: new tokens per answer, training steps, min answers per level, answers per
# stream, streams asking while training
    "full": {"max_new_tokens": 64, "train_steps": 80, "min_answers": 8, "per_stream": 2, "train_streams": 8},
    "small": {"max_new_tokens": 16, "train_steps": 4, "min_answers": 4, "per_stream": 1, "train_streams": 4},
}
SWAP_GROUP = "color"  # the family whose group is retrained and swapped

from benchmarks.gpu_check_workload import (  # noqa: E402  (after the path set-up)
    Asker,
    corrections,
    level_summary,
    random_images,
    run_streams,
    time_ema_update,
)
from benchmarks.serving_throughput import percentile  # noqa: E402
from llaca.model.memory import GIB, Memory  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=("full", "small"), default="full")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, help="bf16 / fp16 / fp32 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/gpu_check_<scale>.json)")
    ap.add_argument("--streams", default="1,8,16", help="concurrent streams per serving level")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--per-stream", type=int, default=None, help="answers each stream asks (at least)")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=8,
                    help="training batch (8; the worker itself takes min(16, max(4, corrections + replay pool)))")
    ap.add_argument("--train-streams", type=int, default=None, help="streams asking while training (8; 4 small)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 on a CPU shared with other work: OpenMP threads "
                         "on oversubscribed cores are many times slower)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--ema-calls", type=int, default=20)
    ap.add_argument("--context-margin-gib", type=float, default=1.5, help="CUDA context etc. added to the peak")
    args = ap.parse_args(argv)
    d = DEFAULTS[args.scale]
    max_new = args.max_new_tokens or d["max_new_tokens"]
    train_steps = args.train_steps or d["train_steps"]
    per_stream = args.per_stream or d["per_stream"]
    train_streams = args.train_streams or d["train_streams"]
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_check_{args.scale}.json"

    import torch

    from llaca.bench.random_adapters import FAMILIES, routed_system
    from llaca.groups.system import RoutedSystem
    from llaca.learn.tuner import TuneConfig, tune
    from llaca.model.llava import GenerationParams, resolve_device
    from llaca.model.memory import parameter_bytes
    from llaca.model.random_llava import random_llava15
    from llaca.model.shared import SharedModel
    from llaca.serve.assistant import ServedVersion
    from llaca.serve.batched_assistant import BatchedAssistant
    from llaca.worker.adapter_files import staging_dir
    from llaca.worker.loop import WorkerConfig
    from llaca.world.heldout import heldout

    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    device = resolve_device(args.device)
    if args.scale == "full" and device.type == "cpu":
        print("the full scale is 7.06 B parameters (28 GiB in fp32): run it on a GPU, or use --scale small",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"complete": False, "scale": args.scale, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "max_new_tokens": max_new, "max_batch": args.max_batch}

    def write() -> None:  # after every phase: a run cut short still leaves what it measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    memory = Memory(device)
    result["memory_kind"] = memory.kind
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        # -- the model and the routed version ------------------------------------------------
        t0 = time.perf_counter()
        lm = random_llava15(args.scale, device=device, dtype=args.dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cfg = lm.model.config
        result["model"] = {
            "name": lm.name, "dtype": str(lm.dtype), "build_seconds": round(time.perf_counter() - t0, 2),
            "parameters": sum(p.numel() for p in lm.model.parameters()),
            "parameter_gib": round(parameter_bytes(lm.model) / GIB, 3),
            "vision": {k: getattr(cfg.vision_config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                                 "num_attention_heads", "image_size", "patch_size")},
            "text": {k: getattr(cfg.text_config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                             "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                             "max_position_embeddings")},
            "vision_feature_layer": cfg.vision_feature_layer, "image_tokens": cfg.image_seq_length,
            "memory_after_build": memory.now(),
        }
        say(f"built {lm.name}: {result['model']['parameters'] / 1e9:.3f} B parameters, {lm.dtype}, "
            f"{result['model']['build_seconds']} s")
        t0 = time.perf_counter()
        v1, groups = routed_system(lm.model, work / "routed", FAMILIES, version="v1", r=args.lora_r)
        result["adapters"] = {"groups": len(groups), "lora_r": args.lora_r, "seconds_to_make": round(time.perf_counter() - t0, 2),
                              "bytes_each": (v1 / groups[FAMILIES[0]] / "adapter_model.safetensors").stat().st_size}
        say(f"made the routed version: {len(groups)} random r={args.lora_r} adapters")
        write()

        served = {"version": ServedVersion("v1", v1)}
        shared = SharedModel(lm, max_adapters=8)
        assistant = BatchedAssistant(shared, lambda: served["version"], poll_seconds=0.0, max_batch=args.max_batch,
                                     threads=args.threads)
        params = GenerationParams(temperature=0.0, max_new_tokens=max_new)
        asker = Asker(assistant, params)
        images = random_images(16, seed=1)
        by_family = {f: sorted({s.question for s in heldout(f, 12, seed=50 + k)}) for k, f in enumerate(FAMILIES)}
        questions = [(qs[(i // 4) % len(qs)], images[i % len(images)])
                     for i in range(64) for qs in [by_family[FAMILIES[i % 4]]]]  # the 4 groups in turn

        # -- 1. serving -----------------------------------------------------------------------
        memory.begin()
        t0 = time.perf_counter()
        warm, _ = run_streams(asker, questions, 4, 1)  # each group's adapter loaded (4 misses), kernels warm
        result["serving_warmup"] = {"seconds": round(time.perf_counter() - t0, 2), "adapter_loads": shared.loads,
                                    "adapter_load_s_mean": round(sum(shared.load_seconds) / max(1, len(shared.load_seconds)), 4),
                                    "groups": sorted(str(r["group"]) for r in warm)}
        say(f"warm-up: {shared.loads} adapters loaded, {result['serving_warmup']['seconds']} s")
        result["serving"] = {}
        for n in [int(x) for x in args.streams.split(",") if x]:
            each = max(per_stream, math.ceil(d["min_answers"] / n))
            before = assistant.batcher.row_steps
            runs, wall = run_streams(asker, questions, n, each, start=n)
            tokens = len(runs) + assistant.batcher.row_steps - before  # prefill token + one per decode row-step
            row = level_summary(runs, wall, tokens, len(runs) * max_new)
            result["serving"][f"{n}_streams"] = {"streams": n, **row}
            say(f"{n:2d} streams: {row['answers']} answers, {row['tokens_per_s']:.1f} tokens/s, TTFT p50 "
                f"{row['ttft_p50_s'] * 1000:.0f} ms, p95 {row['ttft_p95_s'] * 1000:.0f} ms")
        result["memory_serving"] = memory.end()
        write()

        # -- 2. one in-app training round while serving --------------------------------------
        train, replay = corrections(8, seed=11, family=SWAP_GROUP), corrections(8, seed=12, family=SWAP_GROUP)
        system = RoutedSystem.load(v1)
        group = groups[SWAP_GROUP]
        worker_lr = {f.name: f.default for f in fields(WorkerConfig)}["lr"]  # the in-app worker's (3e-4)
        tcfg = TuneConfig(method="llaca+replay", steps=train_steps, lr=worker_lr, batch_size=args.train_batch,
                          lora_r=args.lora_r, lora_alpha=2 * args.lora_r, seed=0)
        trained = work / "trained" / group
        marks: list[tuple[int, float]] = []

        def progress(step: int, total: int, loss: float) -> None:
            marks.append((step, time.perf_counter()))
            say(f"training step {step}/{total}, loss {loss:.3f}")

        busy, bg_runs, bg_errors = threading.Event(), [], []
        bg_before = assistant.batcher.row_steps

        def background(s: int) -> None:
            k = 0
            try:
                while not busy.is_set():
                    q, image = questions[(s + k * train_streams) % len(questions)]
                    bg_runs.append(asker.ask(q, image))
                    k += 1
            except Exception as e:  # noqa: BLE001  (reported below)
                bg_errors.append(e)

        memory.begin()
        chat = [threading.Thread(target=background, args=(s,), daemon=True) for s in range(train_streams)]
        for t in chat:
            t.start()
        t0 = time.perf_counter()
        try:
            res = tune(None, lm.processor, train, tcfg, init_adapter=system.adapters[group], out_dir=trained,
                       replay=replay, progress=progress, shared=shared)
        finally:
            train_wall = time.perf_counter() - t0
            busy.set()
            for t in chat:
                t.join()
        chat_wall = time.perf_counter() - t0
        if bg_errors:
            raise RuntimeError(f"an answer during training failed: {bg_errors[0]!r}") from bg_errors[0]
        rec = res.record
        steady = None
        if len(marks) >= 2:
            steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
        bg_tokens = len(bg_runs) + assistant.batcher.row_steps - bg_before
        result["training"] = {
            "method": rec["method"], "steps": rec["steps"], "batch_size": tcfg.batch_size, "lr": tcfg.lr,
            "lora_r": tcfg.lora_r, "samples": rec["samples"], "replay_pool": rec["replay_pool"],
            "mixed_precision": rec["mixed_precision"], "trainable_parameters": rec["trainable_parameters"],
            "seconds": rec["seconds"], "wall_seconds": round(train_wall, 2),
            "step_seconds_mean": round(rec["seconds"] / rec["steps"], 4),
            "step_seconds_steady": round(steady, 4) if steady is not None else None,
            "loss_first": round(rec["loss_first"], 4), "loss_last": round(rec["loss_last"], 4),
            "ema_alpha_mean": (rec.get("ema") or {}).get("alpha_mean"),
            "ema_fallback_fraction": (rec.get("ema") or {}).get("fallback_fraction"),
            "served_meanwhile": {"streams": train_streams, "answers": len(bg_runs),
                                 "tokens_per_s": round(bg_tokens / chat_wall, 2),
                                 "ttft_p50_s": round(percentile([r["ttft"] for r in bg_runs], 0.5), 4) if bg_runs else None,
                                 "ttft_p95_s": round(percentile([r["ttft"] for r in bg_runs], 0.95), 4) if bg_runs else None},
        }
        result["memory_serving_plus_training"] = memory.end()
        result["training"].update(time_ema_update(trained, device, args.ema_calls))
        tr = result["training"]
        say(f"trained {tr['steps']} steps: {tr['step_seconds_mean']:.3f} s/step, EMA update "
            f"{tr['ema_update_s'] * 1000:.2f} ms, {len(bg_runs)} answers served meanwhile")
        write()

        # -- 3. swap to the retrained version, first answer on it ----------------------------
        v2 = system.replaced(group, trained, "trained", system.codebook).write(staging_dir(work / "routed" / "adapters", "v2"))
        question = (by_family[SWAP_GROUP][0], images[0])
        loads = shared.loads
        served["version"] = ServedVersion("v2", v2)
        t0 = time.perf_counter()
        assistant.refresh(force=True)  # the routing table only: no weights move yet
        t_swap = time.perf_counter() - t0
        first = asker.ask(*question)
        total = t_swap + first["seconds"]
        result["swap"] = {
            "routing_swap_s": round(t_swap, 5), "to_first_token_s": round(t_swap + first["ttft"], 4),
            "to_first_answer_s": round(total, 4), "adapter_load_s": round(shared.load_seconds[-1], 4),
            "adapter_loaded": shared.loads - loads, "version": first["version"], "group": first["group"],
            "served_version_after": assistant.version,
        }
        say(f"swap to v2: first token after {result['swap']['to_first_token_s'] * 1000:.0f} ms, first answer after "
            f"{total * 1000:.0f} ms (adapter load {result['swap']['adapter_load_s'] * 1000:.0f} ms)")

        # -- verdicts -------------------------------------------------------------------------
        if memory.cuda:
            peak = result["memory_serving_plus_training"]["peak_allocated_gib"] + args.context_margin_gib
            result["fits"] = {"basis": "peak max_memory_allocated of serving + training, plus the context margin",
                              "context_margin_gib": args.context_margin_gib, "needed_gib": round(peak, 3),
                              "fits_24gb": peak < 24, "fits_48gb": peak < 48}
        else:
            result["fits"] = {"basis": "not measured on CPU (RSS is no GPU memory)", "context_margin_gib": None,
                              "needed_gib": None, "fits_24gb": None, "fits_48gb": None}
        result["seconds_total"] = round(time.perf_counter() - started, 1)
        result["complete"] = True
        write()
        assistant.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(result, out)
    return 0


def print_summary(r: dict, out: Path) -> None:
    m = r["model"]
    print(f"\nGPU check, scale {r['scale']} on {r['device']} ({r['device_name']}): {m['name']}, "
          f"{m['parameters'] / 1e9:.3f} B parameters, {m['dtype']}, {m['image_tokens']} image tokens; "
          f"greedy, {r['max_new_tokens']} new tokens per answer")
    print(f"\n{'serving (4 groups)':22}{'answers':>8}{'tokens/s':>10}{'TTFT p50':>10}{'p95':>8}{'text p50':>10}  (ms)")
    for s in r["serving"].values():
        print(f"{s['streams']:>3} concurrent streams  {s['answers']:6d}{s['tokens_per_s']:10.1f}"
              f"{s['ttft_p50_s'] * 1000:10.0f}{s['ttft_p95_s'] * 1000:8.0f}{s['first_text_p50_s'] * 1000:10.0f}")
    t = r["training"]
    print(f"\ntraining ({t['method']}, {t['steps']} steps, batch {t['batch_size']}, lr {t['lr']}, r {t['lora_r']}, "
          f"{t['mixed_precision']}) while {t['served_meanwhile']['streams']} streams ask:")
    steady = f", steady {t['step_seconds_steady']:.3f}" if t["step_seconds_steady"] else ""
    print(f"  step {t['step_seconds_mean']:.3f} s mean{steady}; EMA update {t['ema_update_s'] * 1000:.3f} ms "
          f"({t['ema_tensors']} tensors, {t['ema_parameters'] / 1e6:.1f} M parameters, {t['ema_param_dtype']})")
    sm = t["served_meanwhile"]
    print(f"  served meanwhile: {sm['answers']} answers, {sm['tokens_per_s']} tokens/s, TTFT p50 "
          f"{(sm['ttft_p50_s'] or 0) * 1000:.0f} ms")
    s = r["swap"]
    print(f"\nswap to a new routed version: first token {s['to_first_token_s'] * 1000:.0f} ms, first answer "
          f"{s['to_first_answer_s'] * 1000:.0f} ms (adapter load {s['adapter_load_s'] * 1000:.0f} ms, "
          f"{s['adapter_loaded']} loaded)")
    print(f"\nmemory ({r['memory_kind']}): serving {r['memory_serving']}, serving + training "
          f"{r['memory_serving_plus_training']}")
    f = r["fits"]
    if f["needed_gib"] is not None:
        print(f"needs {f['needed_gib']} GiB with {f['context_margin_gib']} GiB context margin: "
              f"fits 24 GB {f['fits_24gb']}, fits 48 GB {f['fits_48gb']}")
    print(f"\nwrote {out} ({r['seconds_total']} s)")


if __name__ == "__main__":
    sys.exit(main())
