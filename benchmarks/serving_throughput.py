"""Serving throughput: answers one at a time (the previous path) against answers batched, same run.

Two live assistants answer the same questions on the same images, greedy, routed over one
instruction group or over four (random LoRA adapters, `llaca.bench.random_adapters`; the base model
answers the rest):

- previous: `llaca.serve.assistant.Assistant` (`--max-batch 1`): each answer its own `generate`,
  answers on different groups taking turns (`AdapterGate`);
- batched: `llaca.serve.batched_assistant.BatchedAssistant` (the default): every answer in flight is
  a row of one continuous batch, each row on its own group's adapter.

In process: N concurrent streams (threads), each asking its questions one after another.
Through the HTTP API: N clients, each its own session, against the real app (`python app.py`
on 127.0.0.1, `--max-batch 1` for the previous path), the routed version registered as the
store's current one; each client uploads its image, joins the queue and reads the answer's
server-sent events (`benchmarks/chat_latency.py`'s client). Reported per configuration:
aggregate tokens/s (answer tokens re-tokenised, + end of sequence, over the wall time),
answers/s, p50 / p95 time to first token, and whether every answer equals the answer the
previous path gave alone.

    python benchmarks/serving_throughput.py                       # ~10 minutes on 2 CPU cores
    python benchmarks/serving_throughput.py --json benchmarks/results/serving_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("describe", "count", "edges", "presence")  # answers of 8-50 tokens on the tiny model


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(runs: list[dict], wall: float, tokenizer) -> dict:
    tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in runs)
    ttft = [r["ttft"] for r in runs]
    return {"answers": len(runs), "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "answers_per_s": round(len(runs) / wall, 3), "ttft_p50_ms": round(1000 * percentile(ttft, 0.5), 1),
            "ttft_p95_ms": round(1000 * percentile(ttft, 0.95), 1)}


def run_streams(ask, jobs: list[list]) -> tuple[list[dict], float]:
    """Each list of jobs in its own thread, one after another; returns the results and the wall time."""
    results: list[dict] = []
    lock = threading.Lock()

    def worker(items):
        for item in items:
            r = ask(item)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(items,)) for items in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def in_process_ask(assistant, params):
    def ask(item):
        k, sample = item
        t0 = time.perf_counter()
        first, text = None, ""
        for text, _ in assistant.stream([(sample.question, None)], sample.image, params):
            if first is None and text.strip():
                first = time.perf_counter()
        end = time.perf_counter()
        return {"key": k, "ttft": (first or end) - t0, "text": text.strip()}

    return ask


def jobs_for(samples: list, streams: int, per_stream: int) -> list[list]:
    """`streams` lists of (index, sample), spread round-robin over the samples."""
    return [[(j, samples[j % len(samples)]) for j in range(s, streams * per_stream, streams)] for s in range(streams)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "llava-tiny"))
    ap.add_argument("--streams", default="1,4,8,16", help="in-process concurrent streams")
    ap.add_argument("--clients", default="1,4,8", help="HTTP clients (empty: skip the HTTP part)")
    ap.add_argument("--per-stream", type=int, default=6, help="answers each stream or client asks")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each path")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from llaca.bench.random_adapters import routed_system
    from llaca.model.llava import GenerationParams, load_model
    from llaca.model.shared import SharedModel
    from llaca.serve.assistant import Assistant, ServedVersion
    from llaca.serve.batched_assistant import BatchedAssistant
    from llaca.world.heldout import heldout

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="serving-throughput-"))
    params = GenerationParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    previous_lm = load_model(args.model, device="cpu")
    version, groups = routed_system(previous_lm.model, work / "routed", FAMILIES)
    tokenizer = previous_lm.processor.tokenizer
    served = lambda: ServedVersion("v1", version)  # noqa: E731
    previous = Assistant(previous_lm, served, threads=args.threads)
    batched = BatchedAssistant(SharedModel(load_model(args.model, device="cpu")), served, threads=args.threads,
                               max_batch=16)
    paths = {"previous": previous, "batched": batched}
    mixes = {"1 group": [s for s in heldout(FAMILIES[0], 16, seed=7)],
             "4 groups": [s for k in range(16) for s in heldout(FAMILIES[k % 4], 1, seed=700 + k)]}

    alone = {}  # the previous path, one answer at a time: the reference every answer must equal
    for mix, samples in mixes.items():
        ask = in_process_ask(previous, params)
        alone[mix] = {i: ask((i, s))["text"] for i, s in enumerate(samples)}
    results: dict = {"in_process": {}, "http": {}}
    print(f"serving throughput: {Path(args.model).name}, greedy, max {args.max_new_tokens} new tokens, "
          f"{args.threads} torch threads per path, {args.per_stream} answers per stream")
    header = f"{'':22}{'path':>10}{'tokens/s':>10}{'answers/s':>11}{'TTFT p50':>10}{'p95 (ms)':>10}{'same':>6}"
    print("\nin process\n" + header)
    for mix, samples in mixes.items():
        for n in [int(x) for x in args.streams.split(",") if x]:
            row = {}
            order = ("previous", "batched") if n % 2 else ("batched", "previous")
            for name in order:
                runs, wall = run_streams(in_process_ask(paths[name], params), jobs_for(samples, n, args.per_stream))
                same = all(r["text"] == alone[mix][r["key"] % len(samples)] for r in runs)
                row[name] = {**summarize(runs, wall, tokenizer), "same_as_alone": same}
            row["ratio_tokens_per_s"] = round(row["batched"]["tokens_per_s"] / row["previous"]["tokens_per_s"], 2)
            results["in_process"][f"{mix}, {n} streams"] = row
            for name in ("previous", "batched"):
                r = row[name]
                print(f"{mix + f', {n} streams':22}{name:>10}{r['tokens_per_s']:10.1f}{r['answers_per_s']:11.2f}"
                      f"{r['ttft_p50_ms']:10.0f}{r['ttft_p95_ms']:10.0f}{'yes' if r['same_as_alone'] else 'NO':>6}")
            print(f"{'':22}{'ratio':>10}{row['ratio_tokens_per_s']:9.2f}x")
    results["ttft_while_training"] = ttft_while_training(args, batched, mixes["4 groups"], params)
    results["step_anatomy"] = step_anatomy(batched.shared, version, mixes["4 groups"][:8])
    results["adapter_bound"] = adapter_bound(args, version, mixes["4 groups"], alone["4 groups"], params, tokenizer)
    previous_lm = previous = batched = paths = None  # free both models before the servers start

    clients = [int(x) for x in args.clients.split(",") if x]
    if clients:
        results["http"] = http_part(args, work, version, mixes["4 groups"], alone["4 groups"], clients, tokenizer)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))
    return 0


def ttft_while_training(args, assistant, samples: list, params, n: int = 24) -> dict:
    """One chat stream's time to first token on the shared model, idle and while the in-app
    worker's training runs on the same model (a LoRA run of the worker's defaults, one torch
    thread: the app gives chat the other cores)."""
    import torch

    from llaca.learn.tuner import TuneConfig, tune
    from llaca.world.heldout import heldout

    ask = in_process_ask(assistant, params)
    idle = [ask((k, samples[k % len(samples)]))["ttft"] for k in range(n)]
    train = heldout("count", 8, seed=99)
    busy: list[float] = []
    done = threading.Event()

    class Enough(Exception):
        pass

    def enough(step, total, loss):  # tune reports every 10 steps: end the run once chat is measured
        if done.is_set():
            raise Enough

    def train_run():
        torch.set_num_threads(1)
        try:
            tune(None, assistant.lm.processor, train, TuneConfig(method="llaca", steps=2000, batch_size=8, lr=3e-4),
                 shared=assistant.shared, progress=enough)
        except Enough:
            pass

    trainer = threading.Thread(target=train_run)
    trainer.start()
    time.sleep(1.0)  # the run is in its steps
    for k in range(n):
        busy.append(ask((k, samples[k % len(samples)]))["ttft"])
    done.set()
    trainer.join()
    out = {"idle_p50_ms": round(1000 * statistics.median(idle), 1), "training_p50_ms": round(1000 * statistics.median(busy), 1),
           "idle_p95_ms": round(1000 * percentile(idle, 0.95), 1), "training_p95_ms": round(1000 * percentile(busy, 0.95), 1)}
    out["ratio_p50"] = round(out["training_p50_ms"] / out["idle_p50_ms"], 2)
    print(f"\nchat TTFT on the shared model, idle -> while the worker trains on it: p50 {out['idle_p50_ms']:.0f} -> "
          f"{out['training_p50_ms']:.0f} ms (x{out['ratio_p50']:.2f}), p95 {out['idle_p95_ms']:.0f} -> {out['training_p95_ms']:.0f} ms")
    return out


def step_anatomy(shared, version: Path, samples: list, steps: int = 30) -> dict:
    """What bounds a batched step: one decode forward of 8 rows, all on the base model, all on
    one adapter, or spread over four (peft's mixed-adapter forward), against one row alone."""
    import torch

    from llaca.groups.system import RoutedSystem
    from llaca.model.adapter_rows import BASE_ROW, rows_use
    from llaca.model.llava import build_inputs

    system = RoutedSystem.load(version)
    names = [system.adapter_name(g) for g in sorted(system.adapters)]
    for g in sorted(system.adapters):
        shared.try_pin(system.adapter_name(g), system.adapters[g])
    lm = shared.lm
    inputs = [build_inputs(lm, [(s.question, None)], s.image, 8)[0] for s in samples]
    width = min(int(i["input_ids"].shape[1]) for i in inputs)
    ids = torch.cat([i["input_ids"][:, -width:] for i in inputs])
    pixels = torch.cat([i["pixel_values"] for i in inputs])
    layouts = {"1 row, base": [BASE_ROW], "8 rows, base": [BASE_ROW] * 8, "8 rows, 1 adapter": [names[0]] * 8,
               "8 rows, 4 adapters": [names[k % 4] for k in range(8)]}
    out = {}
    with torch.inference_mode():
        for label, rows in layouts.items():
            n = len(rows)
            with rows_use(rows):
                cache = shared.base(input_ids=ids[:n], pixel_values=pixels[:n], use_cache=True,
                                    logits_to_keep=1).past_key_values
                step_ids = torch.ones((n, 1), dtype=torch.long)
                times = []
                for k in range(steps):
                    t0 = time.perf_counter()
                    shared.base(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                                position_ids=torch.full((n, 1), width + k))
                    times.append(time.perf_counter() - t0)
            out[label] = round(1000 * statistics.median(times), 3)
    for name in names:
        shared.unpin(name)
    print("\none decode step, median ms: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
    return out


def adapter_bound(args, version: Path, samples: list, alone: dict, params, tokenizer) -> dict:
    """8 streams over 4 groups with at most 4, 2 or 1 adapters resident: the cost of a miss."""
    import statistics

    from llaca.model.llava import load_model
    from llaca.model.shared import SharedModel
    from llaca.serve.assistant import ServedVersion
    from llaca.serve.batched_assistant import BatchedAssistant

    out = {}
    print("\n8 streams over 4 groups, at most N adapters resident (LLACA_MAX_LOADED_ADAPTERS)")
    print(f"{'':22}{'tokens/s':>10}{'loads':>7}{'evictions':>10}{'load ms (mean)':>16}{'same':>6}")
    lm = load_model(args.model, device="cpu")
    for bound in (4, 2, 1):
        shared = SharedModel(lm, max_adapters=bound)
        assistant = BatchedAssistant(shared, lambda: ServedVersion("v1", version), threads=args.threads, max_batch=16)
        runs, wall = run_streams(in_process_ask(assistant, params), jobs_for(samples, 8, args.per_stream))
        same = all(r["text"] == alone[r["key"] % len(samples)] for r in runs)
        load_ms = 1000 * statistics.mean(shared.load_seconds) if shared.load_seconds else 0.0
        out[f"{bound} resident"] = {**summarize(runs, wall, tokenizer), "loads": shared.loads,
                                    "evictions": shared.evictions, "load_ms_mean": round(load_ms, 2),
                                    "same_as_alone": same}
        print(f"{f'at most {bound}':22}{out[f'{bound} resident']['tokens_per_s']:10.1f}{shared.loads:7d}"
              f"{shared.evictions:10d}{load_ms:16.1f}{'yes' if same else 'NO':>6}")
        assistant.close()
        shared.drop_unused(set())
    return out


def http_part(args, work: Path, version: Path, samples: list, alone: dict, clients: list[int], tokenizer) -> dict:
    """The same questions through the real app's /ask endpoint, previous path against batched."""
    import shutil

    from app.server import AppServer
    from benchmarks.chat_latency import HttpAsk
    from feedback_store import FeedbackStore

    images = []
    for k, s in enumerate(samples):
        images.append(work / f"q{k}.png")
        s.image.save(images[-1])
    out: dict = {}
    quota = {"LLACA_QUESTIONS_PER_MINUTE": "100000"}  # a benchmark asks faster than any one author may
    print("\nthrough the HTTP API (upload + queue + server-sent events)\n" + f"{'':22}" + f"{'path':>10}"
          + f"{'tokens/s':>10}{'answers/s':>11}{'TTFT p50':>10}{'p95 (ms)':>10}{'same':>6}")
    servers = {"previous": {"LLACA_MAX_BATCH": "1"}, "batched": {"LLACA_MAX_BATCH": "16"}}
    for name, env in servers.items():
        data = work / f"http-{name}"
        (data / "adapters").mkdir(parents=True)
        shutil.copytree(version, data / "adapters" / "v1")
        store = FeedbackStore(data)
        store.register_adapter("v1", None, data / "adapters" / "v1", "llaca+groups")
        store.promote_adapter("v1")
        store.close()
        with AppServer(args.model, data, env={**quota, **env}, threads=args.threads,
                       log_path=work / f"app-{name}.log") as server:
            warm = HttpAsk(server.url)
            warm.run(images[0], samples[0].question, args.max_new_tokens)
            for n in clients:
                asks = [HttpAsk(server.url) for _ in range(n)]

                def ask(item, asks=asks):
                    k, s = item
                    client = asks[k % n]
                    r = client.run(images[k % len(samples)], s.question, args.max_new_tokens)
                    return {"key": k, "ttft": r["ttft"], "text": r["text"], "upload": r["upload"]}

                runs, wall = run_streams(ask, jobs_for(samples, n, args.per_stream))
                same = all(r["text"] == alone[r["key"] % len(samples)] for r in runs)
                res = {**summarize(runs, wall, tokenizer), "same_as_alone": same,
                       "upload_p50_ms": round(1000 * statistics.median(r["upload"] for r in runs), 1)}
                out.setdefault(f"{n} clients", {})[name] = res
                print(f"{f'{n} clients':22}{name:>10}{res['tokens_per_s']:10.1f}{res['answers_per_s']:11.2f}"
                      f"{res['ttft_p50_ms']:10.0f}{res['ttft_p95_ms']:10.0f}{'yes' if same else 'NO':>6}")
    for key, row in out.items():
        row["ratio_answers_per_s"] = round(row["batched"]["answers_per_s"] / row["previous"]["answers_per_s"], 2)
        row["ratio_ttft_p50"] = round(row["batched"]["ttft_p50_ms"] / row["previous"]["ttft_p50_ms"], 2)
        print(f"{key:22}{'ratio':>10} answers/s x{row['ratio_answers_per_s']:.2f}, TTFT p50 x{row['ratio_ttft_p50']:.2f}")
    return out


if __name__ == "__main__":
    sys.exit(main())
