"""The learning loop through the real app, as users drive it (gradio_client on 127.0.0.1).

    python benchmarks/learning_loop.py [--families position,count,letter,choice] [--buffer 48]

For each family in turn, one client asks about fresh synthetic images and corrects every
wrong answer until its buffer is full (the buffer size threshold makes it ready); the app's
background worker trains, guards and promotes. Reported:
  * time from the correction that fills a buffer to the promoted version answering that
    family correctly (target: under 2 minutes for a 48-item buffer);
  * chat time to first token while the worker trains, against idle, measured in the same
    run (target: at most 2x);
  * the served model's accuracy on every family after each buffer, and forgetting per family.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.server import AppServer  # noqa: E402
from llaca.evaluate import is_correct  # noqa: E402
from llaca.metrics import online_forgetting  # noqa: E402
from llaca.world.heldout import heldout  # noqa: E402


class Images:
    """Fresh synthetic images written once to disk, handed to the client as files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.counter = 0

    def fresh(self, family: str, n: int, seed: int):
        from gradio_client import handle_file

        out = []
        for s in heldout(family, n, seed=seed):
            self.counter += 1
            path = self.root / f"{family}-{seed}-{self.counter}.png"
            s.image.save(path)
            out.append((handle_file(str(path)), s.question, s.answer))
        return out


def ask(client, image, question):
    answer, message_id, version = client.predict(image, question, 0.0, 0.7, 64, api_name="/ask")
    return answer, message_id, version


def ttft(client, image, question) -> float:
    """Seconds until the first streamed update of /ask arrives."""
    t0 = time.perf_counter()
    job = client.submit(image, question, 0.0, 0.7, 64, api_name="/ask")
    for _ in job:
        first = time.perf_counter() - t0
        break
    else:
        first = time.perf_counter() - t0
    job.result()
    return first


def accuracy(client, images: Images, family: str, n: int, seed: int) -> tuple[float, set[str]]:
    hits, versions = 0, set()
    for image, q, a in images.fresh(family, n, seed):
        got, _, version = ask(client, image, q)
        hits += is_correct(got, a)
        versions.add(version)
    return 100.0 * hits / n, versions


def status(client) -> dict:
    return client.predict(api_name="/status")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--families", default="position,count,letter,choice")
    ap.add_argument("--buffer", type=int, default=48)
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument("--ttft-n", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the chat and of the worker (2 cores here)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the data dir and images (removed otherwise, also when interrupted)")
    args = ap.parse_args(argv)
    families = args.families.split(",")
    all_families = ["color", "shape"] + families
    work = Path(tempfile.mkdtemp(prefix="llaca-loop-"))
    try:
        return run(args, families, all_families, work)
    finally:  # also on Ctrl+C: the app is stopped (AppServer) and the scratch folder goes
        if args.keep:
            print(f"kept the data dir and images in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, families: list[str], all_families: list[str], work: Path) -> int:
    from gradio_client import Client

    images = Images(work / "images")
    images.root.mkdir()
    report = {"buffer": args.buffer, "families": families, "rows": [], "buffers": []}
    with AppServer(args.model, work / "data", args=["--buffer-size", str(args.buffer)], threads=args.threads,
                   worker=True, timeout=300) as app:
        teacher, chatter = Client(app.url, verbose=False), Client(app.url, verbose=False)
        probe = images.fresh("color", args.ttft_n, 5)
        idle = [ttft(chatter, im, q) for im, q, _ in probe]
        row = {f: accuracy(chatter, images, f, args.eval_n, 100 + k)[0] for k, f in enumerate(all_families)}
        report["rows"].append({"after": "base", **row})
        print("base:", row, flush=True)
        busy: list[float] = []
        for j, family in enumerate(families):
            corrections, seed = 0, 1000 * (j + 1)
            while corrections < args.buffer:
                for image, q, a in images.fresh(family, args.buffer, seed):
                    got, mid, _ = ask(teacher, image, q)
                    if is_correct(got, a):
                        continue  # a user corrects wrong answers only
                    client_result = teacher.predict(mid, a, api_name="/correct")
                    corrections += 1
                    if corrections == args.buffer:
                        break
                seed += 1
            t_fill = time.perf_counter()
            buffer_id = client_result[0]
            print(f"{family}: buffer {buffer_id} filled with {corrections} corrections", flush=True)
            # chat latency while the worker trains on it
            k = 0
            while time.perf_counter() - t_fill < args.timeout:
                st = status(teacher)
                buf = next(b for b in st["buffers"] if b["id"] == buffer_id)
                if buf["status"] in ("promoted", "rejected"):
                    break
                if any(w["state"] == "training" for w in st["worker"]):
                    im, q, _ = probe[k % len(probe)]
                    busy.append(ttft(chatter, im, q))
                    k += 1
                else:
                    time.sleep(0.3)
            t_done = time.perf_counter() - t_fill
            learned_at = None
            if buf["status"] == "promoted":
                for image, q, a in images.fresh(family, 20, seed + 50):
                    got, _, version = ask(teacher, image, q)
                    if is_correct(got, a):
                        learned_at = time.perf_counter() - t_fill
                        break
            row = {f: accuracy(chatter, images, f, args.eval_n, 100 + k2)[0] for k2, f in enumerate(all_families)}
            report["rows"].append({"after": family, **row})
            report["buffers"].append({"family": family, "buffer": buffer_id, "status": buf["status"],
                                      "version": buf["adapter_version"], "reason": buf["reason"],
                                      "seconds_to_decision": round(t_done, 1),
                                      "seconds_to_correct_answer": round(learned_at, 1) if learned_at else None})
            print(f"{family}: {buf['status']} as {buf['adapter_version']} after {t_done:.0f}s; accuracy {row}", flush=True)
    rows = report["rows"]
    # forgetting (llaca.metrics): best accuracy since the family was known (base families: from
    # the start; taught families: from the row after their buffer) minus the final accuracy
    first_row = {f: 0 for f in ("color", "shape")} | {f: k + 1 for k, f in enumerate(families)}
    known = [[r[f] if i >= first_row[f] else None for f in all_families] for i, r in enumerate(rows)]
    forgetting = {f: round(v, 1) for f, v in online_forgetting(all_families, known).items()}
    report["forgetting"] = forgetting
    report["ttft_idle_median_s"] = round(statistics.median(idle), 4)
    report["ttft_training_median_s"] = round(statistics.median(busy), 4) if busy else None
    report["ttft_ratio"] = round(report["ttft_training_median_s"] / report["ttft_idle_median_s"], 2) if busy else None

    print("\nbuffer  family     decision   version  s to decision  s to a correct answer")
    for b in report["buffers"]:
        print(f"{b['buffer']:>6}  {b['family']:<10} {b['status']:<10} {str(b['version']):<8} {b['seconds_to_decision']:>13}  {b['seconds_to_correct_answer']}")
    print("\nserved accuracy (%) after each buffer:")
    print("after      " + " ".join(f"{f:>9}" for f in all_families))
    for r in report["rows"]:
        print(f"{r['after']:<10} " + " ".join(f"{r[f]:>9.1f}" for f in all_families))
    print("forgetting " + " ".join(f"{forgetting[f]:>9.1f}" if f in forgetting else f"{'-':>9}" for f in all_families))
    print(f"\nTTFT idle {report['ttft_idle_median_s'] * 1000:.1f} ms (n={len(idle)}), while training "
          f"{(report['ttft_training_median_s'] or 0) * 1000:.1f} ms (n={len(busy)}): ratio {report['ttft_ratio']} (target <= 2)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
