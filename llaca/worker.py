"""The learning loop: claim a ready buffer -> tune from the served adapter -> guard -> promote.

Runs as a background thread inside the app (default) or as its own process:

    python -m llaca.worker --data-dir DIR [--model models/llava-tiny] [--device cuda]

It shares nothing with the app but the data directory (the store and `adapters/`), which must
be on a local disk of the one host that runs both (SQLite's WAL needs shared memory on one
host; the store refuses a network filesystem). Training can still use many GPUs: with a
training command (`--train-command "accelerate launch --num_processes 4 -m llaca.tune"`,
LLACA_TRAIN_COMMAND) the worker writes the buffer's training set as a LLaVA-format folder
under `DATA_DIR/training/`, runs the command (`llaca.tune.run_command`), and then guards and
promotes its adapter as it does one trained in-process (the default). A buffer is held by
a lease that a heartbeat renews while training; if the worker dies, the lease expires and
the buffer is trained again. Adapters are published atomically (`adapter_files.publish`)
and only then marked current, so a crash never exposes a half-written version.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapter_files import publish, staging_dir, sweep_staging
from .dataset import VQASample, read_folder
from .evaluate import adapter_scores
from .guard import EARLIER, NEW, PROBE, EvalSet, GuardReport, decide
from .liveness import HEARTBEAT_SECONDS, STOPPED
from .model import DEFAULT_MODEL, LoadedModel, load_model
from .tune import run_command
from .tuner import TuneConfig, TuneResult, library_versions, tune, uses_replay

log = logging.getLogger(__name__)


MIN_ITEMS_TO_HOLD_OUT = 3  # a smaller buffer is judged on the corrections it trained on
TRAINING_DIR = "training"


class LeaseLost(RuntimeError):
    """Another worker took this buffer over (our lease expired); abandon the run."""


def sweep_training_dirs(training_dir: Path) -> list[Path]:
    """Remove training-set folders left by a worker process that no longer runs (named `…-pid<N>-…`)."""
    removed = []
    for p in Path(training_dir).glob("*-pid*-*"):
        try:
            pid = int(p.name.split("-pid", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue  # its worker is alive (one host owns the data dir, so pids are comparable)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


@dataclass
class WorkerConfig:
    data_dir: Path
    model: str = DEFAULT_MODEL
    device: str | None = None
    method: str = "llaca"
    steps: int = 80
    lr: float = 3e-4  # measured: 80 steps learn a new family from ~40 corrections, base skills unchanged
    batch_size: int = 16
    heldout_fraction: float = 0.2
    min_heldout: int = 2
    margin: float = 5.0
    lease_seconds: float = 90.0
    poll_seconds: float = 2.0
    idle_ready_seconds: float | None = 900.0
    threads: int | None = None  # torch threads for training on CPU (None: leave as is)
    probe_n: int = 60
    probe_data: list[Path] = field(default_factory=list)
    replay_per_buffer: int = 16
    seed: int = 0
    train_command: str | None = None  # e.g. "accelerate launch --num_processes 4 -m llaca.tune"; None: in-process
    crash_at: str | None = None  # fault injection for crash tests: SIGKILL self at a named point
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def synthetic_probes(n: int) -> list[EvalSet]:
    """The base families every LLaVA here should keep answering: colour and shape of a shape."""
    from .world.heldout import heldout

    return [EvalSet(f, PROBE, heldout(f, n, seed=777_000 + k)) for k, f in enumerate(("color", "shape"))]


class LearningWorker:
    """One worker; `run()` loops until `stop` is set, `run_once()` handles at most one buffer."""

    def __init__(self, cfg: WorkerConfig, store=None, lm: LoadedModel | None = None) -> None:
        from feedback_store import FeedbackStore

        self.cfg = cfg
        self.store = store or FeedbackStore(cfg.data_dir)
        self.adapters_dir = Path(cfg.data_dir) / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.training_dir = Path(cfg.data_dir) / TRAINING_DIR  # training sets written for a training command
        self._lm = lm
        self._probes: list[EvalSet] | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None  # set by start_background
        self._state_lock = threading.Lock()
        self._last_state: tuple[str, dict] = ("starting", {})
        self._last_write = 0.0
        self._closed = False  # after shutdown() nothing but "stopped" is written

    # -- resources loaded once ---------------------------------------------------------

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(self.cfg.model, device=self.cfg.device)
        return self._lm

    @property
    def probes(self) -> list[EvalSet]:
        if self._probes is None:
            if self.cfg.probe_data:
                self._probes = [EvalSet(Path(p).name, PROBE, read_folder(p)) for p in self.cfg.probe_data]
            else:
                self._probes = synthetic_probes(self.cfg.probe_n)
        return self._probes

    def _checkpoint(self, name: str) -> None:
        """Crash tests kill the worker here with a real SIGKILL (no cleanup, like a power cut)."""
        if self.cfg.crash_at == name:
            import signal

            log.warning("crash test: SIGKILL at %s", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def state(self, state: str, **detail) -> None:
        """Report what the worker does now (its row in the store's worker_status table)."""
        with self._state_lock:
            if self._closed:
                return
            self._last_state = (state, detail)
            self._write(state, detail)

    def _write(self, state: str, detail: dict) -> None:
        try:
            self.store.set_worker_state(self.cfg.worker_id, state, detail)
            self._last_write = time.monotonic()
        except Exception:  # status is best effort; never let it kill training
            log.exception("could not write worker state")

    def beat(self) -> None:
        """Repeat the last report if it is older than the heartbeat period, so a worker that is
        idle or busy evaluating still shows as alive (``llaca.liveness``)."""
        with self._state_lock:
            if not self._closed and time.monotonic() - self._last_write >= HEARTBEAT_SECONDS:
                self._write(*self._last_state)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop, wait up to ``timeout`` s for it, and mark this worker stopped in the
        store. A buffer it was training returns to the queue when its lease expires."""
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        self.close()

    def close(self) -> None:
        """Write the final ``stopped`` state once; later reports are ignored."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._write(STOPPED, {})
        log.info("learning worker %s stopped", self.cfg.worker_id)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        sweep_staging(self.adapters_dir)
        sweep_training_dirs(self.training_dir)
        self.state("idle")
        try:
            while not self.stop.is_set():
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("learning cycle failed; the buffer returns to the queue when its lease expires")
                    self.state("error", message="the last cycle failed; see the worker log")
                    worked = False
                if not worked:
                    self.beat()
                    self.stop.wait(self.cfg.poll_seconds)
        finally:  # also on KeyboardInterrupt / SystemExit
            self.close()

    def run_once(self) -> bool:
        if self.cfg.idle_ready_seconds:
            self.store.mark_idle_buffers_ready(self.cfg.idle_ready_seconds)
        buffer = self.store.claim_ready_buffer(self.cfg.worker_id, self.cfg.lease_seconds)
        if buffer is None:
            return False
        log.info("claimed buffer %s (%d items)", buffer.id, buffer.size)
        self.process(buffer)
        return True

    # -- one buffer --------------------------------------------------------------------------

    def _samples(self, items) -> list[VQASample]:
        from PIL import Image

        out = []
        for it in items:
            if not it.image_sha256:
                continue
            with Image.open(self.store.image_path(it.image_sha256)) as im:
                out.append(VQASample(f"item-{it.id}", im.convert("RGB"), [(it.question, it.answer)], f"buffer-{it.buffer_id}"))
        return out

    def _split(self, buffer) -> tuple[list, list]:
        # The split is seeded by the buffer id, so an attempt after a crash recomputes the same one.
        items = [it for it in self.store.buffer_items(buffer.id) if it.image_sha256]
        n_held = 0 if len(items) < MIN_ITEMS_TO_HOLD_OUT else max(self.cfg.min_heldout, round(self.cfg.heldout_fraction * len(items)))
        held_ids = set(random.Random(f"split:{buffer.id}").sample([it.id for it in items], min(n_held, len(items) - 1)))
        self.store.set_splits(buffer.id, {it.id: ("heldout" if it.id in held_ids else "train") for it in items})
        return [it for it in items if it.id not in held_ids], [it for it in items if it.id in held_ids]

    def _earlier_sets(self, exclude: int) -> tuple[list[EvalSet], list[VQASample]]:
        by_buffer = defaultdict(list)
        for it in self.store.heldout_items("trained"):
            if it.buffer_id != exclude:
                by_buffer[it.buffer_id].append(it)
        sets = [EvalSet(f"buffer {b}", EARLIER, self._samples(items)) for b, items in sorted(by_buffer.items())]
        replay: list[VQASample] = []
        if uses_replay(self.cfg.method):
            for b in sorted(by_buffer):
                train = [it for it in self.store.buffer_items(b) if it.split == "train"]
                replay += self._samples(train[: self.cfg.replay_per_buffer])
        return sets, replay

    def _eval_adapter(self, adapter: Path | None, sets: list[EvalSet]) -> dict[str, float]:
        scored = [s for s in sets if s.samples]
        return dict(zip((s.name for s in scored), adapter_scores(self.lm, adapter, [s.samples for s in scored])))

    def process(self, buffer) -> str:
        cfg, store = self.cfg, self.store
        heartbeat_stop = threading.Event()
        lost = threading.Event()

        def heartbeat() -> None:
            while not heartbeat_stop.wait(min(cfg.lease_seconds / 3, HEARTBEAT_SECONDS)):
                try:
                    store.renew_lease(buffer.id, cfg.worker_id, cfg.lease_seconds)
                except Exception:
                    lost.set()
                    return
                self.beat()  # evaluating a big model can take longer than the staleness limit

        hb = threading.Thread(target=heartbeat, name=f"lease-{buffer.id}", daemon=True)
        hb.start()
        try:
            return self._process(buffer, lost)
        finally:
            heartbeat_stop.set()
            hb.join(timeout=5)

    def _recover(self, buffer) -> str | None:
        """Finish what a crashed attempt on this buffer already produced, instead of training again."""
        cfg, store = self.cfg, self.store
        for a in store.list_adapters():
            if (a.metrics or {}).get("buffer") != buffer.id or not Path(a.path).exists():
                continue
            reason = (a.metrics.get("guard") or {}).get("reason", "")
            if a.status == "candidate":  # crashed between registering and promoting
                if (a.metrics.get("guard") or {}).get("passed"):
                    store.promote_adapter(a.version)
                    a = store.get_adapter(a.version)
                else:
                    store.reject_adapter(a.version, reason)
                    a = store.get_adapter(a.version)
            status = "rejected" if a.status == "rejected" else "trained"
            store.finish_claim(buffer.id, cfg.worker_id, status, f"{reason} (recovered after an interrupted run)", a.version)
            self.state("promoted" if status == "trained" else "rejected", buffer=buffer.id, version=a.version, reason=reason)
            log.info("buffer %s: recovered %s (%s) from an interrupted run", buffer.id, a.version, a.status)
            return "promoted" if status == "trained" else "rejected"
        return None

    def _process(self, buffer, lost: threading.Event) -> str:
        cfg, store = self.cfg, self.store
        recovered = self._recover(buffer)
        if recovered:
            return recovered
        train_items, held_items = self._split(buffer)
        train = self._samples(train_items)
        if not train:
            store.finish_claim(buffer.id, cfg.worker_id, "rejected", "no corrections with an image to learn from", None)
            self.state("rejected", buffer=buffer.id, reason="no corrections with an image")
            return "rejected"
        held = self._samples(held_items)
        current = store.current_adapter()
        parent = current.version if current else None
        parent_path = Path(current.path) if current else None
        earlier, replay = self._earlier_sets(buffer.id)
        new_name = f"buffer {buffer.id}"
        # with too few items to hold any out, plasticity is judged on the training items
        sets = [EvalSet(new_name, NEW, held or train)] + earlier + self.probes

        stage = staging_dir(self.adapters_dir, f"buffer{buffer.id}-{os.getpid()}-{int(time.time())}")
        tcfg = TuneConfig(method=cfg.method, steps=cfg.steps, lr=cfg.lr, batch_size=min(cfg.batch_size, max(4, len(train))),
                          seed=cfg.seed + buffer.id)
        self.state("training", buffer=buffer.id, step=0, total=tcfg.steps)

        def progress(step: int, total: int, loss: float) -> None:
            if lost.is_set():
                raise LeaseLost(f"lost the lease on buffer {buffer.id}")
            self.state("training", buffer=buffer.id, step=step, total=total, loss=round(loss, 4))

        t0 = time.perf_counter()
        result = self._train(buffer.id, train, replay, tcfg, parent_path, stage, progress)
        self.state("evaluating", buffer=buffer.id)
        cand = self._eval_adapter(stage, sets)
        cur = self._eval_adapter(parent_path, sets)
        report = decide(cand, cur, sets, cfg.margin)
        if lost.is_set():
            raise LeaseLost(f"lost the lease on buffer {buffer.id} while evaluating")
        self._checkpoint("before-publish")
        version, final = self._publish(stage)
        self._checkpoint("after-publish")
        metrics = self._metrics(current, buffer, version, sets, cand, cur, report, result.record, time.perf_counter() - t0)
        store.register_adapter(version, parent, final, cfg.method, metrics, library_versions())
        self._checkpoint("after-register")
        if report.passed:
            store.promote_adapter(version)
            self._checkpoint("after-promote")
            store.finish_claim(buffer.id, cfg.worker_id, "trained", report.reason, version)
            self.state("promoted", buffer=buffer.id, version=version, reason=report.reason)
            log.info("promoted %s from buffer %s: %s", version, buffer.id, report.reason)
            return "promoted"
        store.reject_adapter(version, report.reason)
        store.finish_claim(buffer.id, cfg.worker_id, "rejected", report.reason, version)
        self.state("rejected", buffer=buffer.id, version=version, reason=report.reason)
        log.info("rejected %s from buffer %s: %s", version, buffer.id, report.reason)
        return "rejected"

    def _train(self, buffer_id: int, train, replay, tcfg: TuneConfig, init: Path | None, stage: Path,
               progress) -> TuneResult:
        """Train in this process (default) or through the configured training command."""
        if not self.cfg.train_command:
            return tune(self.lm.model, self.lm.processor, train, tcfg, init_adapter=init, out_dir=stage,
                        replay=replay, progress=progress)
        self.training_dir.mkdir(parents=True, exist_ok=True)
        env = {"OMP_NUM_THREADS": str(self.cfg.threads)} if self.cfg.threads else None
        with tempfile.TemporaryDirectory(prefix=f"buffer{buffer_id}-pid{os.getpid()}-", dir=self.training_dir) as work:
            return run_command(self.cfg.train_command, train, tcfg, model=self.cfg.model, out_dir=stage,
                               work_dir=Path(work), init_adapter=init, replay=replay, progress=progress, env=env)

    def _publish(self, stage: Path) -> tuple[str, Path]:
        """Name the next version and move the staged folder there (another worker may race us)."""
        number = int(self.store.next_adapter_version().lstrip("v"))
        for _ in range(1000):
            version = f"v{number}"
            if not (self.adapters_dir / version).exists():  # a folder without a row: left by a crash
                try:
                    return version, publish(stage, self.adapters_dir, version)
                except FileExistsError:  # another worker took this name just now
                    pass
            number += 1
        raise RuntimeError("could not find a free adapter version name")

    def _metrics(self, current, buffer, version, sets, cand, cur, report: GuardReport, record: dict, seconds: float) -> dict:
        """The online accuracy matrix: one row per served version, columns = probes + buffers in order."""
        prev = (current.metrics if current else {}) or {}
        tasks = list(prev.get("tasks") or [s.name for s in sets if s.kind == PROBE])
        rows = [list(r) for r in prev.get("matrix") or []]
        labels = list(prev.get("row_labels") or [])
        new_name = f"buffer {buffer.id}"
        if new_name not in tasks:
            tasks.append(new_name)
        if not rows:  # the first row is the version we start from, on the same columns
            rows, labels = [[cur.get(t) for t in tasks]], [current.version if current else "base"]
        rows = [r + [None] * (len(tasks) - len(r)) for r in rows]
        rows.append([cand.get(t) for t in tasks])
        labels.append(version)
        forgetting = {}
        for i, t in enumerate(tasks):
            seen = [r[i] for r in rows[:-1] if r[i] is not None]
            if seen and rows[-1][i] is not None:
                forgetting[t] = round(max(seen) - rows[-1][i], 2)
        return {
            "buffer": buffer.id, "session": buffer.session_id, "tasks": tasks, "matrix": rows, "row_labels": labels,
            "forgetting": forgetting, "guard": report.to_dict(), "seconds": round(seconds, 1),
            "tune": {k: record.get(k) for k in ("method", "steps", "samples", "seconds", "loss_first", "loss_last", "ema", "replay_pool",
                                                "num_processes", "global_batch")},
        }


def start_background(cfg: WorkerConfig, store=None) -> tuple[LearningWorker, threading.Thread]:
    """Start the worker as a daemon thread (the app's default); `worker.stop.set()` ends it."""
    worker = LearningWorker(cfg, store)
    thread = threading.Thread(target=worker.run, name="llaca-worker", daemon=True)
    worker.thread = thread
    thread.start()
    return worker, thread


def build_parser() -> argparse.ArgumentParser:
    d = WorkerConfig
    ap = argparse.ArgumentParser(prog="python -m llaca.worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LLACA_DATA_DIR", "data")),
                    help="the app's data dir: store.db, images/, adapters/ (default: $LLACA_DATA_DIR or ./data)")
    ap.add_argument("--model", default=os.environ.get("LLACA_MODEL", DEFAULT_MODEL),
                    help=f"the LLaVA the app serves, hub id or folder (default: $LLACA_MODEL or {DEFAULT_MODEL})")
    ap.add_argument("--device", default=os.environ.get("LLACA_DEVICE"),
                    help="cpu, cuda, cuda:1 ... (default: $LLACA_DEVICE, else cuda if available)")
    ap.add_argument("--method", default=d.method, help=f"tuning method: seq, ema, llaca, seq+replay, llaca+replay (default {d.method})")
    ap.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps per buffer (default {d.steps})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    ap.add_argument("--margin", type=float, default=d.margin,
                    help=f"points an earlier task or a base probe may lose before a candidate is rejected (default {d.margin:g})")
    ap.add_argument("--lease", type=float, default=d.lease_seconds,
                    help=f"seconds a claimed buffer stays ours without a heartbeat (default {d.lease_seconds:g})")
    ap.add_argument("--poll", type=float, default=d.poll_seconds, help=f"seconds between looks for a ready buffer (default {d.poll_seconds:g})")
    ap.add_argument("--idle-ready", type=float, default=d.idle_ready_seconds,
                    help=f"seconds after which an idle open buffer is learned, 0 = never (default {d.idle_ready_seconds:g})")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for training (default: torch's choice)")
    ap.add_argument("--probe-data", type=Path, nargs="*", default=[],
                    help="LLaVA-format folders of base probes (default: synthetic colour and shape probes)")
    ap.add_argument("--probe-n", type=int, default=d.probe_n, help=f"synthetic probe samples per base family (default {d.probe_n})")
    ap.add_argument("--train-command", default=os.environ.get("LLACA_TRAIN_COMMAND") or None,
                    help="train through this command, e.g. 'accelerate launch --num_processes 4 -m llaca.tune' "
                         "(default: $LLACA_TRAIN_COMMAND, else in this process)")
    ap.add_argument("--once", action="store_true", help="handle at most one ready buffer, then exit")
    ap.add_argument("--crash-at", default=None, help=argparse.SUPPRESS)  # crash tests only
    return ap


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = WorkerConfig(args.data_dir, args.model, args.device, args.method, args.steps, args.lr, margin=args.margin,
                       lease_seconds=args.lease, poll_seconds=args.poll, threads=args.threads, probe_data=args.probe_data,
                       crash_at=args.crash_at, probe_n=args.probe_n, idle_ready_seconds=args.idle_ready or None,
                       train_command=args.train_command)
    worker = LearningWorker(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops cleanly, like Ctrl+C
    try:
        if args.once:
            if args.threads:
                torch.set_num_threads(args.threads)
            sweep_staging(worker.adapters_dir)
            sweep_training_dirs(worker.training_dir)
            worker.run_once()
        else:
            worker.run()
    except KeyboardInterrupt:
        log.info("interrupted; a buffer in training returns to the queue when its lease expires")
    finally:
        worker.shutdown(timeout=0)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
