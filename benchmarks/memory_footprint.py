"""Memory of the app process: one shared model (serving + in-app training) against the previous two copies.

Two paths, each in a fresh process (RSS is per process, and freed memory is not always given
back to the system, so the paths must not share one):

- shared (`--max-batch 8`, the default): `app.services.create_services` -> `make_assistant`
  gives a `BatchedAssistant` on a `SharedModel`; the in-app worker is
  `LearningWorker(WorkerConfig(settings), store, shared=assistant.shared)` and trains on it;
- previous (`--max-batch 1`): `Assistant` on the app's model; the worker loads its own copy
  (`worker.lm`, a second `load_model` of the same folder).

On two models: (a) the embedded tiny model `models/llava-tiny`; (b) the small-scale LLaVA-1.5
geometry of `llaca.model.random_llava` (336 px, 576 image tokens, Llama; saved to a temporary folder so
`Settings(model=folder)` loads it like any model, twice on the previous path).

Per path and model:
- idle: after the app answered one question and the worker holds its model: the bytes of
  parameter storage behind the served model and the worker's model (`llaca.model.memory.
  parameter_bytes`, distinct storages: shared weights count once) and the process's RSS;
- while training: one `tune(...)` as the worker runs it (`shared=worker.shared`; 8 samples,
  batch 8, 2 steps, lr 3e-4, r 16): parameter bytes and RSS read inside the progress callback
  (after the last step, the trained adapter and its optimizer state still held), and the peak RSS
  over the run (Linux VmHWM, reset when the run starts).

    python benchmarks/memory_footprint.py      # ~3 minutes on 2 CPU cores; writes benchmarks/results/memory_footprint.{json,md}
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MIB = 1024 ** 2
PATHS = {"shared": 8, "previous": 1}  # path -> --max-batch


def file_backed_bytes(*modules) -> int:
    """Bytes of the distinct parameter/buffer storages of `modules` that are memory-mapped files
    (transformers loads fp32 safetensors on the CPU zero-copy: such pages are shared with the
    page cache and count in RSS only once touched)."""
    try:
        with open("/proc/self/maps") as f:
            maps = [(int(a, 16), int(b, 16)) for line in f
                    for a, b in [line.split()[0].split("-")] if len(line.split()) > 5 and line.split()[5].startswith("/")]
    except OSError:
        return 0
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            st = t.untyped_storage()
            if t.device.type == "cpu" and any(a <= st.data_ptr() < b for a, b in maps):
                seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def measure_one(model: str, max_batch: int, data_dir: Path, steps: int) -> dict:
    """One app process's memory on `model` with `--max-batch max_batch` (this process)."""
    import torch

    torch.set_num_threads(1)
    from app.services import create_services
    from llaca.config.settings import Settings
    from llaca.learn.tuner import TuneConfig, tune
    from llaca.model.llava import GenerationParams
    from llaca.model.memory import parameter_bytes, peak_rss, reset_peak_rss, rss_bytes
    from llaca.worker.loop import LearningWorker, WorkerConfig
    from llaca.world.heldout import heldout

    rss_start = rss_bytes()  # the runtime (Python, torch, transformers, the app's modules), no model yet
    settings = Settings.from_args(["--model", model, "--data-dir", str(data_dir), "--max-batch", str(max_batch),
                                   "--device", "cpu", "--threads", "1"], env={})
    services = create_services(settings)
    assistant = services.assistant
    worker = LearningWorker(WorkerConfig(settings), services.store, shared=getattr(assistant, "shared", None))
    one = parameter_bytes(assistant.lm.model)  # one copy of the model
    worker_lm = worker.lm  # the previous path loads its own copy here
    sample = heldout("color", 1, seed=5)[0]
    for _ in assistant.stream([(sample.question, None)], sample.image, GenerationParams(temperature=0.0, max_new_tokens=8)):
        pass
    gc.collect()
    idle = {"parameter_bytes": parameter_bytes(assistant.lm.model, worker_lm.model), "rss_bytes": rss_bytes(),
            "file_mapped_parameter_bytes": file_backed_bytes(assistant.lm.model, worker_lm.model)}

    wcfg = WorkerConfig(settings)
    train = heldout("color", 8, seed=6)
    cfg = TuneConfig(method="seq", steps=steps, lr=wcfg.lr, batch_size=min(wcfg.batch_size, max(4, len(train))), seed=0)
    during: dict = {}

    def progress(step: int, total: int, loss: float) -> None:
        if step == total:
            during.update(parameter_bytes=parameter_bytes(assistant.lm.model, worker.lm.model), rss_bytes=rss_bytes())

    reset = reset_peak_rss()
    t0 = time.perf_counter()
    tune(worker.lm.model, worker.lm.processor, train, cfg, out_dir=data_dir / "trained", progress=progress,
         shared=worker.shared)
    seconds = time.perf_counter() - t0
    during["peak_rss_bytes"] = peak_rss() if reset else None
    gc.collect()
    result = {
        "model": model, "max_batch": max_batch, "assistant": type(assistant).__name__,
        "worker_shares_model": worker.shared is not None, "one_model_parameter_bytes": one,
        "idle": idle, "training": during, "training_seconds": round(seconds, 2),
        "training_config": {"method": cfg.method, "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                            "lora_r": cfg.lora_r, "samples": len(train)},
        "rss_before_model_bytes": rss_start,
        "base_weight_copies": round(idle["parameter_bytes"] / one, 3),
        "parameters": sum(p.numel() for p in assistant.lm.model.parameters()),
    }
    services.store.close()
    return result


def run_child(model: str, max_batch: int, steps: int, work: Path) -> dict:
    data = Path(tempfile.mkdtemp(prefix=f"mb{max_batch}-", dir=work))
    out = data / "result.json"
    cmd = [sys.executable, __file__, "--child", model, str(max_batch), str(data), str(out), "--steps", str(steps)]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.1f}"


def ratio(a: int | None, b: int | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


MEASURES = [("parameter storage, idle", "idle", "parameter_bytes"),
            ("… of it memory-mapped from the model file", "idle", "file_mapped_parameter_bytes"),
            ("RSS, idle", "idle", "rss_bytes"),
            ("parameter storage, training", "training", "parameter_bytes"),
            ("RSS, training", "training", "rss_bytes"),
            ("peak RSS over the training run", "training", "peak_rss_bytes")]


def combine(runs: list[dict]) -> dict:
    """The repeats of one path: the first run's description, and per measure the median of the
    runs (`idle`, `training`) and their range (`range`: [min, max])."""
    out = {k: v for k, v in runs[0].items() if k not in ("idle", "training", "training_seconds")}
    out["repeats"] = len(runs)
    out["training_seconds"] = [r["training_seconds"] for r in runs]
    out["idle"], out["training"], out["range"] = {}, {}, {}
    for _, phase, key in MEASURES:
        values = [r[phase].get(key) for r in runs]
        if any(v is None for v in values):
            out[phase][key], out["range"][f"{phase}_{key}"] = None, None
            continue
        out[phase][key] = int(statistics.median(values))
        out["range"][f"{phase}_{key}"] = [min(values), max(values)]
    out["runs"] = [{"idle": r["idle"], "training": r["training"]} for r in runs]
    return out


def cell(r: dict, phase: str, key: str) -> str:
    value, span = r[phase].get(key), r["range"].get(f"{phase}_{key}")
    if value is None:
        return "n/a"
    if span and span[0] != span[1] and r["repeats"] > 1:
        return f"{mib(value)} ({mib(span[0])}–{mib(span[1])})"
    return mib(value)


def table(results: dict) -> list[str]:
    lines = ["| model | measure | shared (max-batch 8) MiB | previous (max-batch 1) MiB | shared / previous |",
             "|---|---|---:|---:|---:|"]
    for name, r in results.items():
        for label, phase, key in MEASURES:
            s, p = r["shared"][phase].get(key), r["previous"][phase].get(key)
            q = ratio(s, p)
            lines.append(f"| {name} | {label} | {cell(r['shared'], phase, key)} | {cell(r['previous'], phase, key)} | "
                         f"{q if q is not None else 'n/a'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "MAX_BATCH", "DATA_DIR", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2, help="training steps of the measured run")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per path and model (median reported)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_footprint.json")
    args = ap.parse_args(argv)
    if args.child:
        model, max_batch, data, out = args.child
        Path(out).write_text(json.dumps(measure_one(model, int(max_batch), Path(data), args.steps)))
        return 0

    import shutil

    from llaca.model.random_llava import save_random_llava15

    work = Path(tempfile.mkdtemp(prefix="memory-footprint-"))
    try:
        models = {"llava-tiny (embedded)": str(ROOT / "models" / "llava-tiny"),
                  "LLaVA-1.5 geometry, small scale (random)": str(save_random_llava15(work / "llava15-small", "small"))}
        results: dict = {}
        for name, model in models.items():
            runs: dict = {path: [] for path in PATHS}
            for k in range(args.repeats):
                for path, mb in (PATHS.items() if k % 2 == 0 else reversed(PATHS.items())):  # alternate the order
                    r = run_child(model, mb, args.steps, work)
                    runs[path].append(r)
                    print(f"{name:42} {path:9} params idle {mib(r['idle']['parameter_bytes']):>7} MiB, training "
                          f"{mib(r['training']['parameter_bytes']):>7} MiB; RSS idle {mib(r['idle']['rss_bytes']):>7} MiB, "
                          f"training {mib(r['training']['rss_bytes']):>7} MiB, peak {mib(r['training']['peak_rss_bytes']):>7}"
                          f" MiB ({r['base_weight_copies']} copies of the base weights)", flush=True)
            results[name] = {path: combine(runs[path]) for path in PATHS}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, r in results.items():  # folders were temporary: keep only the model's name
        for path in PATHS:
            r[path]["model"] = Path(r[path]["model"]).name if name.startswith("llava-tiny") else "llaca.model.random_llava small"
    ratios = {name: {f"{phase}_{key}": ratio(r["shared"][phase].get(key), r["previous"][phase].get(key))
                     for _, phase, key in MEASURES} for name, r in results.items()}
    import torch

    doc = {"what": __doc__.split("\n\n")[0], "device": "cpu", "torch": torch.__version__, "torch_threads": 1,
           "repeats": args.repeats, "results": results, "ratios_shared_over_previous": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    lines = table(results)
    cfg = next(iter(results.values()))["shared"]["training_config"]
    md = ["# Memory of the app process: one shared model against two copies", "",
          ("`python benchmarks/memory_footprint.py` (CPU, fp32, 1 torch thread; each path in a fresh process, "
           f"{args.repeats} processes per path and model: the median, and the range when the runs differ)."),
          "Parameter storage = `llaca.model.memory.parameter_bytes(served model, worker's model)` (distinct storages);",
          ("RSS = the process's resident set; \"training\" is read in `tune`'s progress callback after the last step "
           f"({cfg['method']}, {cfg['samples']} samples, batch {cfg['batch_size']}, {cfg['steps']} steps, lr {cfg['lr']}, "
           f"r {cfg['lora_r']}); the peak is VmHWM over the run."), "",
          *lines, "",
          "On the CPU, transformers loads an fp32 safetensors model zero-copy: the parameters are private",
          "memory maps of the model file (the \"memory-mapped\" row), whose pages count in RSS only once",
          "touched and are shared with the page cache. So the previous path's second copy costs little RSS",
          "while idle, and RSS, dominated by the Python/torch runtime and, while training, by activations",
          "and the allocator, moves far less than the parameter storage. On a GPU both copies are real",
          "device memory (`model.to(device)` copies), so the parameter-storage ratio is the one that",
          "carries over there.", ""]
    for name, r in results.items():
        md.append(f"- {name}: {r['shared']['parameters'] / 1e6:.2f} M parameters; base weights held "
                  f"{r['shared']['base_weight_copies']}x (shared) vs {r['previous']['base_weight_copies']}x (previous); "
                  f"RSS before the model was loaded: {mib(r['shared']['rss_before_model_bytes'])} / "
                  f"{mib(r['previous']['rss_before_model_bytes'])} MiB (the Python, torch and app runtime).")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(lines))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
