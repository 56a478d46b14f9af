"""Chat latency: time to first token (TTFT) and tokens/s through the app vs `model.generate` directly.

All paths answer the same synthetic images and questions, greedy, in one run, on the same
number of CPU threads, interleaved item by item (the order rotates) so load from other
processes hits them alike:

- direct: `llaca.model.llava.build_inputs` (the processor) + `model.generate` with a
  `TextIteratorStreamer` in a thread; the clock starts at the call;
- app, in-process: the `/ask` handler (`app.api.ApiHandlers.ask`) on the same loaded model:
  store writes, image handling, the live assistant's lock and version check, streaming;
- app, HTTP: the real app (`python app.py` on 127.0.0.1, its own process, a temporary data
  dir) through its `/ask` endpoint: the image is uploaded first (as the chat page does when
  an image is attached; reported separately), then the clock runs from joining the queue to
  the server-sent events that carry the answer. A plain httpx client reads the events;
  `gradio_client` polls its message queue every 50 ms, which would measure the client.

TTFT is the time until the answer text is non-empty; tokens/s counts the answer's tokens
(re-tokenised, + end-of-sequence) over the whole answer time. (The app sends at most one
update per 50 ms, so a per-token rate after the first token is not comparable.) Printed:
medians, and the ratios app/direct (what the app adds).

    python benchmarks/chat_latency.py                  # tiny model, 60 'describe' questions, ~1 minute
    python benchmarks/chat_latency.py --json benchmarks/results/chat_latency.json

Exit status 0 when the app's HTTP API stays within --limit (x1.10) of direct generation on
both time to first token and tokens/s; the in-process row shows where the time goes.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _result(t0: float, first: float | None, end: float, text: str) -> dict:
    return {"ttft": (first or end) - t0, "total": end - t0, "text": text.strip()}


def direct_run(lm, image, question: str, max_new_tokens: int) -> dict:
    """One answer with model.generate called directly (streamed, greedy)."""
    import torch
    from transformers import TextIteratorStreamer

    from llaca.model.llava import build_inputs

    t0 = time.perf_counter()
    inputs, max_new = build_inputs(lm, [(question, None)], image, max_new_tokens)
    streamer = TextIteratorStreamer(lm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def run():
        with torch.inference_mode():
            lm.model.generate(**inputs, do_sample=False, max_new_tokens=max_new, streamer=streamer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text, first = "", None
    for piece in streamer:
        text += piece
        if first is None and text.strip():
            first = time.perf_counter()
    end = time.perf_counter()
    thread.join()
    return _result(t0, first, end, text)


def inprocess_run(api, state, image_path: Path, question: str, max_new_tokens: int) -> dict:
    """One answer through the app's /ask handler, called in this process (one session)."""
    t0 = time.perf_counter()
    first, text = None, ""
    for text, _, _ in api.ask(str(image_path), question, 0.0, 0.7, max_new_tokens, state, None):
        if first is None and text.strip():
            first = time.perf_counter()
    return _result(t0, first, time.perf_counter(), text)


class HttpAsk:
    """A minimal client of the app's /ask endpoint (Gradio's upload + queue + SSE protocol)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.http = httpx.Client(timeout=60)
        config = self.http.get(url + "config").json()
        self.fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "ask")
        self.session = uuid.uuid4().hex[:12]  # one session, like one gradio_client.Client

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as f:
            [server_path] = self.http.post(self.url + "gradio_api/upload", files={"files": (path.name, f, "image/png")}).json()
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def run(self, image_path: Path, question: str, max_new_tokens: int) -> dict:
        u0 = time.perf_counter()
        file_data = self.upload(image_path)
        upload = time.perf_counter() - u0
        t0 = time.perf_counter()
        payload = {"data": [file_data, question, 0.0, 0.7, max_new_tokens, None], "fn_index": self.fn_index,
                   "session_hash": self.session, "event_data": None, "trigger_id": None}
        self.http.post(self.url + "gradio_api/queue/join", json=payload).raise_for_status()
        text, first, end = "", None, None
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": self.session}) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                kind = msg.get("msg")
                if kind in ("process_generating", "process_completed"):
                    output = msg.get("output") or {}
                    if kind == "process_completed" and not msg.get("success", True):
                        raise RuntimeError(f"/ask failed: {output.get('error')}")
                    text = _apply(text, (output.get("data") or [text])[0])
                    if first is None and text.strip():
                        first = time.perf_counter()
                    if kind == "process_completed":
                        end = time.perf_counter()
                        break
        res = _result(t0, first, end or time.perf_counter(), text)
        res["upload"] = upload
        return res


def _apply(text: str, value) -> str:
    """The answer after one streamed update: a full value, or Gradio's diff operations."""
    if isinstance(value, str):
        return value
    for op, path, val in value or []:
        if op == "append" and not path:
            text += val
        elif op == "replace" and not path:
            text = val
    return text


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end of sequence


def summarize(runs: list[dict], tokenizer) -> dict:
    toks = [n_tokens(tokenizer, r["text"]) for r in runs]
    out = {
        "ttft_ms": statistics.median(r["ttft"] for r in runs) * 1000,
        "total_ms": statistics.median(r["total"] for r in runs) * 1000,
        "tokens_per_s": statistics.median(t / r["total"] for t, r in zip(toks, runs)),
        "mean_tokens": statistics.mean(toks),
    }
    if "upload" in runs[0]:
        out["upload_ms"] = statistics.median(r["upload"] for r in runs) * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "llava-tiny"))
    ap.add_argument("--n", type=int, default=60, help="questions per path (after warm-up)")
    ap.add_argument("--family", default="describe", help="synthetic task family (describe gives the longest answers)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, for every path")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--limit", type=float, default=1.10, help="largest acceptable app/direct ratio")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from app.api import ApiHandlers
    from app.server import AppServer
    from app.services import create_services
    from app.state import SessionState
    from llaca.config.settings import Settings
    from llaca.model.llava import load_model
    from llaca.world.families import generate

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="chat-latency-"))
    items = generate(args.family, args.n + args.warmup, seed=4242, size=96)
    paths = []
    for k, it in enumerate(items):
        paths.append(work / f"img{k}.png")
        it.image.save(paths[-1])

    lm = load_model(args.model, device="cpu")
    tokenizer = lm.processor.tokenizer
    api = ApiHandlers(create_services(Settings(model=args.model, data_dir=work / "inprocess", device="cpu"), lm=lm))
    state = SessionState()
    runs: dict[str, list[dict]] = {"direct": [], "in-process": [], "http": []}
    quota = {"LLACA_QUESTIONS_PER_MINUTE": "100000"}  # a benchmark asks faster than any one author may
    with AppServer(args.model, work / "data", threads=args.threads, log_path=work / "app.log", env=quota) as server:
        http = HttpAsk(server.url)
        for k, (it, path) in enumerate(zip(items, paths)):
            q = it.turns[0][0]
            paths_k = [("direct", lambda: direct_run(lm, it.image, q, args.max_new_tokens)),
                       ("in-process", lambda: inprocess_run(api, state, path, q, args.max_new_tokens)),
                       ("http", lambda: http.run(path, q, args.max_new_tokens))]
            paths_k = paths_k[k % 3:] + paths_k[: k % 3]  # rotate the order
            res = {name: fn() for name, fn in paths_k}
            if len({r["text"] for r in res.values()}) != 1:
                print(f"warning: answers differ on item {k}: {[r['text'] for r in res.values()]}", file=sys.stderr)
            if k >= args.warmup:
                for name, r in res.items():
                    runs[name].append(r)

    s = {name: summarize(r, tokenizer) for name, r in runs.items()}
    d = s["direct"]
    ratios = {name: {"ttft": v["ttft_ms"] / d["ttft_ms"], "total": v["total_ms"] / d["total_ms"],
                     "tokens_per_s": d["tokens_per_s"] / v["tokens_per_s"]}
              for name, v in s.items() if name != "direct"}
    print(f"chat latency: {Path(args.model).name}, {args.n} '{args.family}' questions (+{args.warmup} warm-up), greedy, "
          f"max {args.max_new_tokens} new tokens, {args.threads} CPU thread(s), {d['mean_tokens']:.1f} tokens/answer")
    print(f"{'':30}{'direct':>10}{'app in-process':>16}{'app HTTP':>10}   ratios app/direct (in-process, HTTP)")
    rows = [("time to first token (ms)", "ttft_ms", "ttft", False), ("whole answer (ms)", "total_ms", "total", False),
            ("tokens/s, whole answer", "tokens_per_s", "tokens_per_s", True)]
    for label, key, rkey, _ in rows:
        line = f"{label:30}{d[key]:10.1f}{s['in-process'][key]:16.1f}{s['http'][key]:10.1f}"
        if rkey:
            line += f"   x{ratios['in-process'][rkey]:.3f}, x{ratios['http'][rkey]:.3f}"
        print(line)
    print(f"{'image upload before asking (ms)':30}{'':10}{'':16}{s['http']['upload_ms']:10.1f}")
    verdicts = {}
    for name in ("in-process", "http"):
        worst = max(ratios[name]["ttft"], ratios[name]["tokens_per_s"])
        added = s[name]["ttft_ms"] - d["ttft_ms"]
        verdicts[name] = "OK" if worst <= args.limit else "OVER"
        print(f"app {name}: adds {added:+.1f} ms to the first token (x{ratios[name]['ttft']:.3f}), "
              f"tokens/s x{ratios[name]['tokens_per_s']:.3f} -> {verdicts[name]} (limit x{args.limit:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": s,
                                         "ratios": ratios, "verdicts": verdicts}, indent=1))
    return 0 if verdicts["http"] == "OK" else 1  # the app's API is the HTTP endpoint; in-process is the breakdown


if __name__ == "__main__":
    sys.exit(main())
