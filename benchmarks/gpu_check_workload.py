"""The workload of `benchmarks/gpu_check.py` and how it is timed.

What the check asks and trains on (random 336 px images, corrections of one family), how it asks
(`Asker`: one answer through `BatchedAssistant.stream`, with TTFT read from the batcher's own
timestamp; `run_streams`: concurrent streams in threads; `level_summary`: one serving level's
figures), and the timed `AdaptiveEMA.update()` on a trained adapter's tensors.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from benchmarks.serving_throughput import percentile


class Asker:
    """Asks through `BatchedAssistant.stream` and keeps each answer's timings; the batcher's
    `submit` is wrapped so the request's own first-token timestamp is read back."""

    def __init__(self, assistant, params) -> None:
        self.assistant, self.params = assistant, params
        self._local = threading.local()
        batcher = assistant.batcher
        original = batcher.submit

        def submit(request):
            self._local.request = request
            return original(request)

        batcher.submit = submit  # BatchedGenerator.stream calls self.submit

    def ask(self, question: str, image) -> dict:
        t0 = time.perf_counter()
        first_text, text, served = None, "", None
        for text, served in self.assistant.stream([(question, None)], image, self.params):
            if first_text is None and text.strip():
                first_text = time.perf_counter()
        end = time.perf_counter()
        request = self._local.request
        first = request.first_token or end
        return {"ttft": first - t0, "first_text": (first_text or end) - t0, "seconds": end - t0,
                "group": served.group if served else None, "version": served.version if served else None}


def run_streams(asker: Asker, questions: list[tuple[str, object]], streams: int, per_stream: int,
                start: int = 0) -> tuple[list[dict], float]:
    """`streams` threads, each asking `per_stream` questions one after another (round-robin
    over `questions`); returns every answer's timings and the wall time."""
    results: list[dict] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(s: int) -> None:
        try:
            for j in range(per_stream):
                q, image = questions[(start + s + j * streams) % len(questions)]
                r = asker.ask(q, image)
                with lock:
                    results.append(r)
        except Exception as e:  # noqa: BLE001  (surfaced below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, time.perf_counter() - t0


def level_summary(runs: list[dict], wall: float, tokens: int, expected: int) -> dict:
    ttft = [r["ttft"] for r in runs]
    first_text = [r["first_text"] for r in runs]
    groups: dict[str, int] = {}
    for r in runs:
        groups[str(r["group"])] = groups.get(str(r["group"]), 0) + 1
    return {
        "answers": len(runs), "wall_seconds": round(wall, 3), "tokens": tokens, "tokens_expected": expected,
        "tokens_per_s": round(tokens / wall, 2), "answers_per_s": round(len(runs) / wall, 3),
        "ttft_p50_s": round(percentile(ttft, 0.5), 4), "ttft_p95_s": round(percentile(ttft, 0.95), 4),
        "first_text_p50_s": round(percentile(first_text, 0.5), 4),
        "first_text_p95_s": round(percentile(first_text, 0.95), 4),
        "answer_p50_s": round(percentile([r["seconds"] for r in runs], 0.5), 4),
        "answers_by_group": groups,
    }


def random_images(n: int, seed: int, size: int = 336):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def corrections(n: int, seed: int, family: str) -> list:
    """`n` corrections: random 336 px images, a question of `family`, a short answer."""
    from llaca.learn.dataset import VQASample
    from llaca.world.heldout import heldout

    qa = heldout(family, n, seed=seed)
    return [VQASample(f"fix-{seed}-{k}", image, [(s.question, s.answer)], family)
            for k, (s, image) in enumerate(zip(qa, random_images(n, seed)))]


def time_ema_update(adapter_dir: Path, device, calls: int) -> dict:
    """`AdaptiveEMA.update()` on tensors shaped, typed and placed like the trained adapter's
    parameters (read back from its file), with random gradients: mean seconds per call."""
    import torch
    from safetensors.torch import load_file

    from llaca.learn.ema import AdaptiveEMA

    tensors = load_file(adapter_dir / "adapter_model.safetensors", device=str(device))
    params = [t.clone().requires_grad_(True) for t in tensors.values()]
    g = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=device, dtype=p.dtype) * 1e-3
    ema = AdaptiveEMA(params)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):  # the first update initialises θ*; the next ones are the steady case
            ema.update()
            for p in params:
                p.add_(p.grad, alpha=-1e-3)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            ema.update()
        sync()
        seconds = (time.perf_counter() - t0) / calls
    return {"ema_update_s": round(seconds, 6), "ema_calls_timed": calls, "ema_tensors": len(params),
            "ema_parameters": sum(p.numel() for p in params), "ema_param_dtype": str(params[0].dtype)}
