"""Flood: one anonymous guest floods /ask and /correct; does anybody else notice?

One run against the real app (`python app.py` on 127.0.0.1, a temporary data dir, the
in-app learning worker on, default settings and quotas):

1. **idle**: client B (its own session and address) asks "What color is the shape?" about
   a fresh synthetic image (a coloured circle on light grey, 64 px) every `--pace` s;
   its latency is the wall time of `Client.predict` (upload + queue + answer).
2. **flood** (`--flood-seconds`): client A, a guest at another address, floods from
   `--a-threads` sessions as fast as it can: long questions (`--a-question-chars`) about
   new images with `max_new_tokens` 1024 (the cap), and a junk /correct on every answer it
   gets (and, when its question is refused, another junk correction of its last answer).
   Probes: one 2,000-character question, one `max_new_tokens` over the cap, new sessions at
   A's address once A's question quota is spent (they must be refused: a new session does
   not reset a guest's count), and one session that forges an `X-Forwarded-For` entry in
   front of the one the proxy appends (the app counts the proxy's own, last entry). B keeps asking at its pace and
   corrects its first 8 answers ("The shape is <colour>.": the model answers one word and a
   correction equal to the answer is refused), which makes B's buffer ready (size 8).
3. **after**: A stops; B keeps asking until its buffer is learned (promoted or rejected) or
   `--wait-timeout`. A monitor reads the store (read-only) every 0.5 s for every buffer's
   status changes: which of A's buffers were waiting when B's became ready, and which were
   learned first.

The app runs with `--quotas public` (a Space's per-author quotas: bound to 127.0.0.1 it
would default to the local ones, 600 questions a minute). A runs in its own process, at
nice 19 (`--a-nice`): on a deployment the flooder's CPU is not the app's; here it shares
the same cores, and its CPU time is reported. Printed and written (`--json`,
`--out` .md): B's latency p50/p95 idle, during the flood, and after it (worker training),
the ratio flood/idle (target at most `--limit`, 2x), A's accepted/refused calls by kind
with the first refusal message of each limit, B's wait from its 8th correction to its
buffer learned, and A's buffers ahead of it.

    python benchmarks/flood.py                         # ~5.5 minutes on 2 CPU cores (most of it waiting for B's buffer)
    python benchmarks/flood.py --flood-seconds 45 --json /tmp/flood.json --out /tmp/flood.md

Exit status 0 when B's p50 and p95 during the flood are within `--limit` of idle.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "benchmarks" / "results" / "flood"
B_QUESTION = "What color is the shape?"
from flood_guest import circle_image, flood_process  # noqa: E402  (beside this script)
from flood_measure import Meter, Monitor, stats  # noqa: E402
from flood_report import report  # noqa: E402

DONE = ("promoted", "rejected")


# --- client B ------------------------------------------------------------------------------------

class ClientB:
    """The other user: one session, its own address, a fresh circle per question, at a steady pace."""

    def __init__(self, url: str, address: str, work: Path, seed: int, monitor: Monitor) -> None:
        from gradio_client import Client

        self.c = Client(url, verbose=False, headers={"X-Forwarded-For": address})
        self.work, self.rng, self.monitor = work, random.Random(seed), monitor
        self.samples: list[dict] = []
        self.corrections: list[dict] = []
        self.errors: list[dict] = []
        self.k = 0

    def ask(self, phase: str, t0: float) -> dict | None:
        from gradio_client import handle_file

        self.k += 1
        path = self.work / f"b-{self.k}.png"
        colour = circle_image(path, self.rng)
        training_before = self.monitor.training()
        start = time.perf_counter()
        try:
            answer, mid, version = self.c.predict(handle_file(str(path)), B_QUESTION, 0.0, 0.7, 64, api_name="/ask")
        except Exception as e:  # noqa: BLE001 - B being refused or failing is a finding, not a crash
            self.errors.append({"phase": phase, "t": time.time() - t0, "error": f"{type(e).__name__}: {e}"})
            return None
        latency = time.perf_counter() - start
        s = {"phase": phase, "t": round(time.time() - t0, 2), "latency_s": latency, "colour": colour,
             "answer": answer, "message_id": mid, "version": version,
             "worker_training": training_before or self.monitor.training()}
        self.samples.append(s)
        return s

    def correct(self, s: dict, t0: float) -> dict | None:
        text = f"The shape is {s['colour']}."
        start = time.time()
        try:
            buffer_id, size, status = self.c.predict(s["message_id"], text, api_name="/correct")
        except Exception as e:  # noqa: BLE001
            self.errors.append({"phase": "correct", "t": start - t0, "error": f"{type(e).__name__}: {e}"})
            return None
        c = {"t_abs": time.time(), "t": round(time.time() - t0, 2), "message_id": s["message_id"],
             "answer": s["answer"], "correction": text, "buffer_id": buffer_id, "size": size, "status": status}
        self.corrections.append(c)
        return c


def paced(pace: float, until, bar=None):
    """Yield at start + k * pace while until() says go on."""
    start, k = time.perf_counter(), 0
    while until():
        wait = start + k * pace - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        if not until():
            return
        yield k
        k += 1
        if bar is not None:
            bar.update(1)


# --- the run -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--baseline-n", type=int, default=12, help="B's questions while the app is idle")
    ap.add_argument("--pace", type=float, default=3.5, help="seconds between B's questions (B's quota: 20 a minute)")
    ap.add_argument("--flood-seconds", type=float, default=50.0,
                    help="how long A floods (over 60 s, A's question window opens a second time)")
    ap.add_argument("--a-threads", type=int, default=2, help="A's flooding sessions, one thread each")
    ap.add_argument("--a-question-chars", type=int, default=800,
                    help="length of A's questions (800: 474 tokens with the image, near the tiny model's 512-token context)")
    ap.add_argument("--a-nice", type=int, default=19,
                    help="niceness of A's client process: on a deployment its CPU is not the app's (0: compete)")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="what A asks for (the app's cap by default)")
    ap.add_argument("--extra-sessions", type=int, default=3, help="new A sessions at A's address, once its quota is spent")
    ap.add_argument("--a-address", default="198.51.100.7", help="A's X-Forwarded-For (simulates a proxy)")
    ap.add_argument("--b-address", default="203.0.113.20", help="B's X-Forwarded-For")
    ap.add_argument("--forged-address", default="192.0.2.99", help="one A session claims this address ('' to skip)")
    ap.add_argument("--corrections", type=int, default=8, help="B's corrections during the flood (the buffer size)")
    ap.add_argument("--wait-timeout", type=float, default=200.0, help="most seconds after the flood to wait for B's buffer")
    ap.add_argument("--limit", type=float, default=2.0, help="largest acceptable flood/idle ratio of B's p50 and p95")
    ap.add_argument("--quotas", default="public",
                    help="app.py --quotas: the per-author quota defaults (public: a Space's; on 127.0.0.1 the app "
                         "would default to local, 600 questions a minute)")
    ap.add_argument("--app-arg", action="append", default=[], help="extra argument for app.py (e.g. --idle-ready=0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS / "flood.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "flood.md")
    args = ap.parse_args(argv)
    command = "python benchmarks/flood.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    command = command.strip()

    from tqdm import tqdm

    from app.server import AppServer
    from llaca.config.settings import Settings

    app_args = ([f"--quotas={args.quotas}"] if args.quotas and "quotas" in Settings.__dataclass_fields__ else []) + args.app_arg
    effective = Settings.from_args(["--model", args.model, "--host", "127.0.0.1", *app_args])
    quota_names = ("quotas", "questions_per_minute", "max_new_tokens", "corrections_per_hour", "waiting_buffers",
                   "pending_reviews", "image_mb_per_day", "buffer_size", "concurrency", "teach", "idle_ready")
    settings = {k: getattr(effective, k) for k in quota_names if hasattr(effective, k)}

    work = Path(tempfile.mkdtemp(prefix="flood-"))
    (work / "img").mkdir()
    t_begin = time.time()
    with AppServer(args.model, work / "data", args=app_args, worker=True, log_path=work / "app.log") as server:
        print(f"app up in {time.time() - t_begin:.1f} s at {server.url} (data {work / 'data'})", file=sys.stderr)
        monitor = Monitor(work / "data" / "store.db")
        monitor.start()
        pid = server.proc.pid
        b = ClientB(server.url, args.b_address, work / "img", args.seed, monitor)
        t0 = time.time()
        for _ in range(2):  # warm-up (not counted)
            b.ask("warm-up", t0)
        b_author = b.c.predict(api_name="/status")["you"]["author"]
        phases: dict[str, dict] = {}

        # 1. idle
        meter = Meter(pid)
        with tqdm(total=args.baseline_n, desc="idle: B asks", file=sys.stderr) as bar:
            for _ in paced(args.pace, lambda: len([s for s in b.samples if s["phase"] == "idle"]) + 
                           len([e for e in b.errors if e["phase"] == "idle"]) < args.baseline_n, bar):
                b.ask("idle", t0)
        phases["idle"] = meter.stop()

        # 2. flood
        a_out = work / "a.json"
        start = time.time() + 4.0  # A's process imports gradio_client meanwhile
        cfg = {"start": start, "end": start + args.flood_seconds, "threads": args.a_threads,
               "question_chars": args.a_question_chars, "max_new_tokens": args.max_new_tokens,
               "address": args.a_address, "forged_address": args.forged_address,
               "extra_sessions": args.extra_sessions, "seed": args.seed + 1000, "work": str(work / "img"),
               "nice": args.a_nice}
        proc = mp.get_context("spawn").Process(target=flood_process, args=(server.url, cfg, str(a_out)), daemon=True)
        proc.start()
        time.sleep(max(0.0, start - time.time()))
        meter = Meter(pid)
        b_ready: dict | None = None
        at_ready: dict[int, dict] = {}
        with tqdm(total=int(args.flood_seconds / args.pace) + 1, desc="flood: B asks", file=sys.stderr) as bar:
            for _ in paced(args.pace, lambda: time.time() < cfg["end"], bar):
                s = b.ask("flood", start)
                if s and len(b.corrections) < args.corrections:
                    c = b.correct(s, start)
                    if c and c["status"] != "open" and b_ready is None:
                        b_ready, at_ready = c, monitor.poll()
        proc.join(timeout=180)
        if proc.is_alive():
            proc.terminate()
        a = json.loads(a_out.read_text()) if a_out.exists() else {"counts": {}, "first_messages": {}, "calls": [],
                                                                      "probes": [], "cpu_s": None, "missing": True}
        phases["flood"] = meter.stop(a.get("cpu_s"))  # (A's CPU includes its start-up, a second or two)

        # 3. after: B keeps asking (at its pace) until its buffer is learned
        meter, w0 = Meter(pid), time.time()
        b_buffer = b_ready["buffer_id"] if b_ready else None
        decided = lambda: b_buffer is not None and monitor.when(b_buffer, DONE) is not None
        with tqdm(desc="after: B asks, waits for its buffer", file=sys.stderr) as bar:
            for _ in paced(args.pace, lambda: not decided() and time.time() - w0 < args.wait_timeout, bar):
                b.ask("after", start)
        phases["after"] = meter.stop()
        monitor.poll()
        monitor.stopped.set()
        status = b.c.predict(api_name="/status")
        log_tail = server.log()
    total_wall = time.time() - t_begin

    # --- figures ---
    lat = {p: [s["latency_s"] for s in b.samples if s["phase"] == p] for p in ("idle", "flood", "after")}
    b_stats = {p: stats(v) for p, v in lat.items()}
    for p in ("flood", "after"):
        for split, want in (("worker training", True), ("worker idle", False)):
            xs = [s["latency_s"] for s in b.samples if s["phase"] == p and s["worker_training"] == want]
            b_stats[f"{p}, {split}"] = stats(xs)
    idle = b_stats["idle"]
    ratio = {k: (b_stats["flood"][k] / idle[k]) if idle[k] and b_stats["flood"][k] else None for k in ("p50_s", "p95_s")}
    verdict = "OK" if all(r is not None and r <= args.limit for r in ratio.values()) else "OVER"

    # learning: B's wait and A's buffers ahead
    learning: dict = {"b_author": b_author, "b_buffer": b_buffer}
    if b_ready:
        t_ready = b_ready["t_abs"]
        b_claimed, b_done = monitor.when(b_buffer, ("training",)), monitor.when(b_buffer, DONE)
        final_b = next((x for x in status["buffers"] if x["id"] == b_buffer), None)
        a_bufs = {i: r for i, r in at_ready.items() if r["author"] != b_author}
        a_ids = {c["id"] for c in monitor.changes if c["author"] != b_author}

        def a_started(i):  # when buffer i went into training
            return monitor.when(i, ("training",))

        def a_done(i):
            return monitor.when(i, DONE)

        learning.update({
            "b_ready_at_s": round(t_ready - start, 2),
            "b_claimed_after_s": None if b_claimed is None else round(b_claimed - t_ready, 1),
            "b_wait_to_learned_s": None if b_done is None else round(b_done - t_ready, 1),
            "b_outcome": final_b["status"] if final_b else None,
            "b_reason": final_b["reason"] if final_b else None,
            "a_buffers_at_b_ready": {st: sorted(i for i, r in a_bufs.items() if r["status"] == st)
                                     for st in ("training", "ready", "open")},
            "a_learned_before_b": sorted(i for i in a_ids if a_done(i) and (b_done is None or a_done(i) <= b_done)
                                         and a_done(i) >= t_ready),
            "a_started_after_b_ready_before_b": sorted(
                i for i in a_ids if a_started(i) and a_started(i) > t_ready and (b_claimed is None or a_started(i) < b_claimed)),
            "a_authors": sorted({c["author"] for c in monitor.changes if c["author"] != b_author}),
        })
    trained = {}  # buffer id -> seconds from claimed to decided
    for c in monitor.changes:
        if c["status"] in DONE and (t := monitor.when(c["id"], ("training",))) is not None:
            trained[c["id"]] = {"who": "B" if c["author"] == b_author else "A", "status": c["status"],
                                "training_s": round(c["t"] - t, 1), "size": c["size"],
                                "mean_item_chars": round(c["item_chars"] or 0)}
    still = {c["id"]: ("B" if c["author"] == b_author else "A") for c in monitor.changes
             if c["status"] == "training" and c["id"] not in trained}
    learning["training_s"] = trained
    learning["still_training_at_end"] = {i: {"who": w, "for_s": round(time.time() - monitor.when(i, ("training",)), 1)}
                                         for i, w in still.items()}
    timeline = [{**c, "t": round(c["t"] - start, 1), "who": "B" if c["author"] == b_author else "A"}
                for c in monitor.changes]

    a_counts = a["counts"]
    result = {
        "command": command,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count()},
        "app_args": app_args, "settings": settings,
        "total_wall_s": round(total_wall, 1),
        "b_latency": b_stats, "ratio_flood_over_idle": ratio, "limit": args.limit, "verdict": verdict,
        "b_errors": b.errors, "b_corrections": [{k: v for k, v in c.items() if k != "t_abs"} for c in b.corrections],
        "a_counts": a_counts, "a_first_refusals": a["first_messages"], "a_probes": a["probes"],
        "a_accepted_ask_times_s": [round(c["t"] - start, 2) for c in a["calls"] if c["kind"] == "ask" and c["outcome"] == "accepted"],
        "a_calls_per_s": len(a["calls"]) / args.flood_seconds,
        "phases": phases, "learning": learning, "buffer_timeline": timeline,
        "b_samples": [{k: v for k, v in s.items() if k != "message_id"} for s in b.samples],
        "monitor_read_errors": monitor.errors,
        "app_log_tail": log_tail[-3000:],
    }
    text = report(result)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
