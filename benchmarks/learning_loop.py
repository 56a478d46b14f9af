"""The learning loop through the real app, as users drive it (gradio_client on 127.0.0.1).

    python benchmarks/learning_loop.py [--families position,count,letter,exists] [--per-family 48]
        [--buffer N] [--learn-method M] [--json F]

One client teaches the families in sequence: for each, it asks about fresh synthetic images
(64-128 px) and corrects every wrong answer, `--per-family` corrections in all; buffers fill
at the app's buffer size (its default unless `--buffer`), and a last partial buffer is queued
with /teach. The app's background worker trains, guards and promotes, while a second client
keeps chatting. Reported, each measured in this run:

  * per buffer: seconds from its last correction to the worker's decision, and, per family,
    seconds from the last correction of its first buffer to a served version that answers
    that family's fresh questions right (target: 2 minutes);
  * the served accuracy on fresh images of every family after each family (once the worker
    is idle), and forgetting: each family's best level since it was taught minus its last;
  * the share of the corrections that a promoted version learned (target: 95%);
  * chat time to first token while the worker trains, against idle (target: at most 2x);
  * routing: time to first token of the final routed version against the same group's
    adapter served alone, in alternating order (ABBA), in this process (target: at most 1.05x).
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
from llaca.learn.evaluate import is_correct  # noqa: E402
from llaca.learn.metrics import online_forgetting  # noqa: E402
from llaca.world.heldout import heldout  # noqa: E402

SIZES = (64, 128)


class Images:
    """Fresh synthetic images written once to disk, handed to the client as files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.counter = 0

    def fresh(self, family: str, n: int, seed: int):
        from gradio_client import handle_file

        out = []
        for s in heldout(family, n, seed=seed, size=SIZES):
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


def wait_idle(client, timeout: float) -> dict:
    """Wait until no buffer of this session is queued or training; returns the last /status."""
    end = time.perf_counter() + timeout
    while True:
        st = status(client)
        if all(b["status"] in ("promoted", "rejected", "open") for b in st["buffers"]) or time.perf_counter() > end:
            return st
        time.sleep(0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--families", default="position,count,letter,exists")
    ap.add_argument("--per-family", type=int, default=48, help="corrections taught per family")
    ap.add_argument("--buffer", type=int, default=None, help="the app's buffer size (default: the app's default)")
    ap.add_argument("--learn-method", default=None, help="the worker's method (default: the app's default)")
    ap.add_argument("--app-arg", action="append", default=[], help="another flag for app.py (repeatable)")
    ap.add_argument("--eval-n", type=int, default=40)
    ap.add_argument("--ttft-n", type=int, default=12)
    ap.add_argument("--routing-n", type=int, default=100, help="generations per arm of the routing comparison")
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


def teach_family(teacher, images: Images, family: str, n: int, seed: int) -> tuple[dict[int, float], int]:
    """Correct `n` wrong answers about fresh images; {buffer id: time of its last correction}."""
    filled: dict[int, float] = {}
    corrections = 0
    while corrections < n:
        for image, q, a in images.fresh(family, n, seed):
            got, mid, _ = ask(teacher, image, q)
            if is_correct(got, a):
                continue  # a user corrects wrong answers only
            buffer_id, _, _ = teacher.predict(mid, a, api_name="/correct")
            filled[int(buffer_id)] = time.perf_counter()
            corrections += 1
            if corrections == n:
                break
        seed += 1
    teach = teacher.predict(api_name="/teach")  # queue a last partial buffer; a status when there is none
    if teach["buffer_id"] is not None:
        filled[int(teach["buffer_id"])] = time.perf_counter()
    return filled, seed


def run(args, families: list[str], all_families: list[str], work: Path) -> int:
    from gradio_client import Client

    images = Images(work / "images")
    images.root.mkdir()
    app_args = [*(["--buffer-size", str(args.buffer)] if args.buffer else []),
                *(["--learn-method", args.learn_method] if args.learn_method else []), *args.app_arg]
    report = {"families": families, "per_family": args.per_family, "app_args": app_args, "rows": [], "buffers": [],
              "first_correct": {}}
    data_dir = work / "data"
    quota = {"LLACA_QUESTIONS_PER_MINUTE": "100000", "LLACA_CORRECTIONS_PER_HOUR": "100000"}  # one scripted teacher
    with AppServer(args.model, data_dir, args=app_args, threads=args.threads, worker=True, timeout=300,
                   env=quota) as app:
        teacher, chatter = Client(app.url, verbose=False), Client(app.url, verbose=False)
        probe = images.fresh("color", args.ttft_n, 5)
        idle = [ttft(chatter, im, q) for im, q, _ in probe]
        row = {f: accuracy(chatter, images, f, args.eval_n, 100 + k)[0] for k, f in enumerate(all_families)}
        report["rows"].append({"after": "base", **row})
        print("base:", row, flush=True)
        busy: list[float] = []
        seen: set[int] = set()
        for j, family in enumerate(families):
            filled, seed = teach_family(teacher, images, family, args.per_family, 1000 * (j + 1))
            first = min(b for b in filled if b not in seen)
            print(f"{family}: {args.per_family} corrections in buffers {sorted(filled)}", flush=True)
            learned_at, k, deadline = None, 0, time.perf_counter() + args.timeout
            fresh = iter(images.fresh(family, 400, seed + 50))
            while time.perf_counter() < deadline:
                st = status(teacher)
                if learned_at is None and any(b["id"] == first and b["status"] == "promoted" for b in st["buffers"]):
                    image, q, a = next(fresh)
                    got, _, _ = ask(teacher, image, q)
                    if is_correct(got, a):
                        learned_at = time.perf_counter() - filled[first]
                if any(w["state"] == "training" for w in st["worker"]):
                    im, q, _ = probe[k % len(probe)]
                    busy.append(ttft(chatter, im, q))
                    k += 1
                elif all(b["status"] in ("promoted", "rejected", "open") for b in st["buffers"]):
                    if learned_at is not None or all(b["status"] != "promoted" for b in st["buffers"] if b["id"] == first):
                        break
                else:
                    time.sleep(0.3)
            st = wait_idle(teacher, args.timeout)
            for b in st["buffers"]:
                if b["id"] in filled and b["id"] not in seen:
                    seen.add(b["id"])
                    report["buffers"].append({"family": family, "buffer": b["id"], "size": len(b["items"]),
                                              "status": b["status"], "version": b["adapter_version"],
                                              "reason": b["reason"]})
            report["first_correct"][family] = round(learned_at, 1) if learned_at is not None else None
            row = {f: accuracy(chatter, images, f, args.eval_n, 100 + k2)[0] for k2, f in enumerate(all_families)}
            report["rows"].append({"after": family, **row})
            print(f"{family}: first correct answer {report['first_correct'][family]} s after its first buffer; "
                  f"accuracy {row}", flush=True)
        final = status(teacher)
        items = [i for b in final["buffers"] for i in b["items"]]
        report["corrections"] = len(items)
        report["learned"] = sum(i["status"] == "learned" for i in items)
        report["not_learned"] = [{"question": i["question"], "status": i["status_text"]} for i in items
                                 if i["status"] != "learned"][:20]
    report["routing"] = routing_overhead(args.model, data_dir, families, args.routing_n, args.threads)
    return summarise(report, families, all_families, idle, busy, args)


def routing_overhead(model: str, data_dir: Path, families: list[str], n: int, threads: int) -> dict | None:
    """TTFT of the final routed version against one of its group adapters served alone."""
    import torch

    from feedback_store import FeedbackStore
    from llaca.groups.system import RoutedSystem, is_routed_system
    from llaca.model.llava import GenerationParams, load_model
    from llaca.serve.assistant import Assistant, ServedVersion

    store = FeedbackStore(data_dir)
    try:
        current = store.current_adapter()
    finally:
        store.close()
    if current is None or not is_routed_system(current.path):
        return None
    torch.set_num_threads(threads)
    system = RoutedSystem.load(current.path)
    samples = [s for f in families for s in heldout(f, 4, seed=77)]
    sample = next((s for s in samples if system.route(s.question)), None)
    if sample is None:
        return None
    group = system.route(sample.question)
    routed = Assistant(load_model(model, device="cpu"), lambda: ServedVersion(current.version, Path(current.path)))
    alone = Assistant(load_model(model, device="cpu"), lambda: ServedVersion("alone", system.adapters[group]))
    params = GenerationParams(temperature=0.0, max_new_tokens=8)

    def first_token(assistant) -> float:
        t0 = time.perf_counter()
        for _ in assistant.stream([(sample.question, None)], sample.image, params):
            return time.perf_counter() - t0
        return time.perf_counter() - t0

    for a in (routed, alone):
        first_token(a)  # warm-up
    times = {"routed": [], "alone": []}
    for i in range(n):  # ABBA order: whichever runs first in a pair is measured slower
        pair = (("routed", routed), ("alone", alone))
        for name, a in (pair if i % 2 == 0 else pair[::-1]):
            times[name].append(first_token(a))
    med = {k: statistics.median(v) for k, v in times.items()}
    route_us = min(timed_route(system, sample.question) for _ in range(5))
    return {"group": group, "n": n, "ttft_routed_ms": round(med["routed"] * 1000, 2),
            "ttft_alone_ms": round(med["alone"] * 1000, 2), "ratio": round(med["routed"] / med["alone"], 3),
            "route_us": round(route_us, 2)}


def timed_route(system, question: str, reps: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        system.route(question)
    return (time.perf_counter() - t0) / reps * 1e6


def summarise(report: dict, families, all_families, idle, busy, args) -> int:
    rows = report["rows"]
    # forgetting (llaca.learn.metrics): best accuracy since the family was known (base families: from
    # the start; taught families: from the row after they were taught) minus the final accuracy
    first_row = {f: 0 for f in ("color", "shape")} | {f: k + 1 for k, f in enumerate(families)}
    known = [[r[f] if i >= first_row[f] else None for f in all_families] for i, r in enumerate(rows)]
    forgetting = {f: round(v, 1) for f, v in online_forgetting(all_families, known).items()}
    report["forgetting"] = forgetting
    report["ttft_idle_median_s"] = round(statistics.median(idle), 4)
    report["ttft_training_median_s"] = round(statistics.median(busy), 4) if busy else None
    report["ttft_ratio"] = round(report["ttft_training_median_s"] / report["ttft_idle_median_s"], 2) if busy else None

    print("\nbuffer  family     size  decision   version")
    for b in report["buffers"]:
        print(f"{b['buffer']:>6}  {b['family']:<10} {b['size']:>4}  {b['status']:<10} {str(b['version']):<8}")
    print("\nseconds from the last correction of a family's first buffer to a correct answer on a fresh image:")
    for f, sec in report["first_correct"].items():
        print(f"  {f:<10} {sec}")
    print("\nserved accuracy (%) on fresh 64-128 px images after each family (worker idle):")
    print("after      " + " ".join(f"{f:>9}" for f in all_families))
    for r in rows:
        print(f"{r['after']:<10} " + " ".join(f"{r[f]:>9.1f}" for f in all_families))
    print("forgetting " + " ".join(f"{forgetting[f]:>9.1f}" if f in forgetting else f"{'-':>9}" for f in all_families))
    share = 100.0 * report["learned"] / max(1, report["corrections"])
    print(f"\ncorrections learned by a promoted version: {report['learned']} / {report['corrections']} ({share:.1f}%)")
    print(f"TTFT idle {report['ttft_idle_median_s'] * 1000:.1f} ms (n={len(idle)}), while training "
          f"{(report['ttft_training_median_s'] or 0) * 1000:.1f} ms (n={len(busy)}): ratio {report['ttft_ratio']} (target <= 2)")
    r = report["routing"]
    if r:
        print(f"routing: TTFT {r['ttft_routed_ms']} ms routed (group {r['group']}) against {r['ttft_alone_ms']} ms "
              f"for its adapter alone (n={r['n']} each, ABBA order): ratio {r['ratio']} (target <= 1.05); "
              f"one route() {r['route_us']} us")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
