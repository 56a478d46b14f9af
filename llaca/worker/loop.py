"""The learning worker's loop: claim a ready buffer, hold its lease, run the learning policy on it.

What is done with a claimed buffer is `llaca.worker.policy`: its corrections are grouped by
instruction, and each group's adapter is trained, guarded and published as a new routed
version. This module owns the rest: the claim and its lease, the heartbeat, the jobs that
come first (forgetting an author: `llaca.worker.forgetting`), reporting what the worker does,
stopping cleanly, and the helpers a run needs (its samples, its split, training in this
process or through a training command, publishing a folder, naming the outcome).

Runs as a background thread inside the app (default) or as its own process:

    python -m llaca.worker --data-dir DIR [--model models/llava-tiny] [--device cuda]

Both are configured by the same `Settings` (`llaca.config.settings`): the same flags and `LLACA_*`
variables (model, data dir, device, learn and tune method, steps, guard margin, idle-ready,
worker threads, training command, log level) give the in-app worker and a worker process the same
`WorkerConfig`.

It shares nothing with the app but the data directory (the store and `adapters/`), which must
be on a local disk of the one host that runs both (SQLite's WAL needs shared memory on one
host; the store refuses a network filesystem). Training can still use many GPUs: with a
training command (`--train-command "accelerate launch --num_processes 4 -m llaca.tune"`,
LLACA_TRAIN_COMMAND) the worker writes a run's training set as a LLaVA-format folder under
`DATA_DIR/training/`, runs the command (`llaca.learn.command.run_command`), and then guards
and publishes its adapter as it does one trained in-process (the default). A buffer is held by
a lease that a heartbeat renews while training; if the worker dies, the lease expires and
the buffer is trained again. Adapters are published atomically (`adapter_files.publish`)
and only then marked current, so a crash never exposes a half-written version.

A data dir whose served version is a single adapter (made by an earlier release's
single-adapter worker) keeps serving it; the worker learns on as groups, which start from the
base model, and its first promoted routed version replaces the single adapter.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from feedback_store import BufferStatus, Split, WorkerActivity
from llaca.config.settings import Settings
from llaca.learn.command import run_command
from llaca.learn.dataset import VQASample, read_folder
from llaca.learn.tuner import TuneConfig, TuneResult, tune
from llaca.model.llava import LoadedModel, load_model
from llaca.model.shared import SharedModel
from llaca.worker.adapter_files import publish_first_free, sweep_staging, version_names
from llaca.worker.guard import (
    HELDOUT_FRACTION,
    MIN_HELDOUT,
    PROBE,
    EvalSet,
    base_probes,
    held_out,
)
from llaca.worker.liveness import HEARTBEAT_SECONDS
from llaca.worker.policy import LeaseLost, learn_buffer

log = logging.getLogger(__name__)

TRAINING_DIR = "training"


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
    """A learning worker's configuration: the shared `Settings` (read under their own names,
    ``cfg.settings.learn_steps``), plus what only a worker has and no variable sets."""

    settings: Settings
    lr: float = 3e-4  # measured with 80 steps, buffers of 8 (benchmarks/worker_defaults.py): 1e-3 is no better
    batch_size: int = 16
    heldout_fraction: float = HELDOUT_FRACTION
    min_heldout: int = MIN_HELDOUT
    lease_seconds: float = 90.0
    claim_poll_seconds: float = 2.0  # between looks for a ready buffer
    probe_n: int = 60
    probe_data: list[Path] = field(default_factory=list)
    # the share of each batch replayed from the group's learned corrections (None:
    # the pool's own share, so new and earlier corrections are drawn alike), and the pool's cap.
    # Measured (benchmarks/worker_defaults.py, 4 families x 48 corrections): 0.25 and the pool's
    # share agree within the noise of 100 test images per family; 0.25 is the tuner's own share.
    group_replay: float | None = 0.25
    group_pool: int = 256
    seed: int = 0
    crash_at: str | None = None  # fault injection for crash tests: SIGKILL self at a named point
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class LearningWorker:
    """One worker; `run()` loops until `stop` is set, `run_once()` handles at most one buffer."""

    def __init__(self, cfg: WorkerConfig, store=None, lm: LoadedModel | None = None, shared=None) -> None:
        from feedback_store import FeedbackStore

        self.cfg, self.settings = cfg, cfg.settings
        self.store = store or FeedbackStore(self.settings.data_dir)
        self.adapters_dir = self.settings.data_dir / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.training_dir = self.settings.data_dir / TRAINING_DIR  # training sets written for a training command
        self._shared = shared  # the app's SharedModel: train and judge on the served model's weights
        self._lm = shared.lm if shared is not None else lm
        self._probes: list[EvalSet] | None = None
        self.stop = threading.Event()
        self._abort: threading.Event | None = None  # the running buffer's "abandon it" event
        self.thread: threading.Thread | None = None  # set by start_background
        self._state_lock = threading.Lock()
        self._last_state: tuple[str, dict] = (WorkerActivity.STARTING, {})
        self._last_write = 0.0
        self._closed = False  # after shutdown() nothing but "stopped" is written

    # -- resources loaded once ---------------------------------------------------------

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(self.settings.model, device=self.settings.device, dtype=self.settings.dtype)
        return self._lm

    @property
    def shared(self) -> SharedModel:
        """The model this worker trains and judges on, as a `SharedModel`: the app's (the one that
        serves), or one over the worker's own model, so that a candidate is always judged through
        the loader that serves it."""
        if self._shared is None:
            self._shared = SharedModel(self.lm)
        return self._shared

    @property
    def probes(self) -> list[EvalSet]:
        if self._probes is None:
            if self.cfg.probe_data:
                self._probes = [EvalSet(Path(p).name, PROBE, read_folder(p)) for p in self.cfg.probe_data]
            else:
                self._probes = base_probes(self.cfg.probe_n)
        return self._probes

    def checkpoint(self, name: str) -> None:
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
        idle or busy evaluating still shows as alive (``llaca.worker.liveness``)."""
        with self._state_lock:
            if not self._closed and time.monotonic() - self._last_write >= HEARTBEAT_SECONDS:
                self._write(*self._last_state)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop, wait up to ``timeout`` s for it, and mark this worker stopped in the
        store. A buffer it was training is abandoned at the next training step and given back
        to the queue untrained (``release_claim``); if the thread does not get there in time,
        the buffer returns when its lease expires. Nothing a user taught is lost either way."""
        self.stop.set()
        if (abort := self._abort) is not None:
            abort.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        self.close()

    def close(self) -> None:
        """Write the final ``stopped`` state once; later reports are ignored."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._write(WorkerActivity.STOPPED, {})
        log.info("learning worker %s stopped", self.cfg.worker_id)

    # -- the loop ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Set the torch threads and sweep what a crashed worker left behind."""
        if self.settings.worker_threads:
            torch.set_num_threads(self.settings.worker_threads)
        sweep_staging(self.adapters_dir)
        sweep_training_dirs(self.training_dir)

    def run(self) -> None:
        self.prepare()
        self.state(WorkerActivity.IDLE)
        try:
            while not self.stop.is_set():
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("learning cycle failed; the buffer returns to the queue when its lease expires")
                    self.state(WorkerActivity.ERROR, message="the last cycle failed; see the worker log")
                    worked = False
                if not worked:
                    self.beat()
                    self.stop.wait(self.cfg.claim_poll_seconds)
        finally:  # also on KeyboardInterrupt / SystemExit
            self.close()

    def run_once(self) -> bool:
        if self.run_job():
            return True
        if self.settings.idle_ready:
            self.store.mark_idle_buffers_ready(self.settings.idle_ready)
        buffer = self.store.claim_ready_buffer(self.cfg.worker_id, self.cfg.lease_seconds)
        if buffer is None:
            return False
        log.info("claimed buffer %s (%d items)", buffer.id, buffer.size)
        self.process(buffer)
        return True

    def run_job(self) -> bool:
        """Run the next retrain job (forgetting an author: ``llaca.worker.forgetting``), if any."""
        from llaca.worker.forgetting import retrain

        job = self.store.claim_job(self.cfg.worker_id)
        if job is None:
            return False
        log.info("job %s: retraining groups %s (%s)", job.id, ", ".join(job.groups), job.reason)
        try:
            detail = retrain(self, job)
        except Exception as e:
            log.exception("job %s failed", job.id)
            self.store.finish_job(job.id, "failed", detail=f"{type(e).__name__}: {e}")
        else:
            current = self.store.current_adapter()
            self.store.finish_job(job.id, "done", current.version if current else None, detail)
        self.state(WorkerActivity.IDLE)
        return True

    # -- one buffer: the lease here, the learning in llaca.worker.policy ---------------------

    def process(self, buffer) -> str:
        """Learn one claimed buffer (`llaca.worker.policy.learn_buffer`) while a heartbeat holds
        its lease; a worker that stops meanwhile gives the buffer back untrained."""
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
        self._abort = lost  # shutdown() sets it: the run stops at its next check, as if the lease were lost
        if self.stop.is_set():
            lost.set()
        try:
            return learn_buffer(self, buffer, lost)
        except LeaseLost:
            if not self.stop.is_set():
                raise
            try:
                store.release_claim(buffer.id, cfg.worker_id)
                log.info("buffer %s given back to the queue untrained: the worker is stopping", buffer.id)
            except Exception:  # lost meanwhile: it returns when the lease expires
                log.info("buffer %s returns to the queue when its lease expires", buffer.id)
            return "released"
        finally:
            self._abort = None
            heartbeat_stop.set()
            hb.join(timeout=5)

    # -- what a run needs ------------------------------------------------------------------

    def samples(self, items) -> list[VQASample]:
        """Stored corrections as training samples (their images read from the store)."""
        from PIL import Image

        out = []
        for it in items:
            if not it.image_sha256:
                continue
            with Image.open(self.store.image_path(it.image_sha256)) as im:
                out.append(VQASample(f"item-{it.id}", im.convert("RGB"), [(it.question, it.answer)], f"buffer-{it.buffer_id}"))
        return out

    def split(self, buffer) -> tuple[list, list]:
        """The buffer's corrections with an image, as (training, held out) items, the split
        stored (`llaca.worker.guard.held_out`: an attempt after a crash gets the same one)."""
        items = [it for it in self.store.buffer_items(buffer.id) if it.image_sha256]
        held = held_out([it.id for it in items], buffer.id, self.cfg.heldout_fraction, self.cfg.min_heldout)
        self.store.set_splits(buffer.id, {it.id: (Split.HELDOUT if it.id in held else Split.TRAIN) for it in items})
        return [it for it in items if it.id not in held], [it for it in items if it.id in held]

    def finish(self, buffer, outcome: BufferStatus, reason: str, version: str | None) -> BufferStatus:
        """End the claim on ``buffer`` and report its outcome, in the one status vocabulary."""
        self.store.finish_claim(buffer.id, self.cfg.worker_id, outcome, reason, version)
        self.state(WorkerActivity(outcome), buffer=buffer.id, version=version, reason=reason)
        log.info("buffer %s %s (%s): %s", buffer.id, outcome, version, reason)
        return outcome

    def train(self, run: str, train, replay, tcfg: TuneConfig, init: Path | None, stage: Path,
              progress) -> TuneResult:
        """Train in this process (default) or through the configured training command."""
        if not self.settings.train_command:
            return tune(self.lm.model, self.lm.processor, train, tcfg, init_adapter=init, out_dir=stage,
                        replay=replay, progress=progress, shared=self.shared)
        self.training_dir.mkdir(parents=True, exist_ok=True)
        threads = self.settings.worker_threads
        env = {"OMP_NUM_THREADS": str(threads)} if threads else None
        with tempfile.TemporaryDirectory(prefix=f"{run}-pid{os.getpid()}-", dir=self.training_dir) as work:
            return run_command(self.settings.train_command, train, tcfg, model=self.settings.model, out_dir=stage,
                               work_dir=Path(work), init_adapter=init, replay=replay, progress=progress, env=env)

    def publish(self, stage: Path, buffer_id: int, promoted: bool) -> tuple[str, Path]:
        """Name the candidate and move the staged folder there (another worker may race us).
        Only a candidate to promote takes the next version number (v1, v2, ...); a rejected
        one is kept under its buffer's name (buffer-7), so served versions count up without gaps."""
        names = (version_names(self.store.next_adapter_version()) if promoted else
                 (f"buffer-{buffer_id}" + (f"-{k}" if k else "") for k in range(1000)))
        return publish_first_free(stage, self.adapters_dir, names)


def start_background(cfg: WorkerConfig, store=None, shared=None) -> tuple[LearningWorker, threading.Thread]:
    """Start the worker as a daemon thread (the app's default); `worker.stop.set()` ends it.
    With `shared` (a `SharedModel`) it trains and judges on that model instead of loading its own."""
    worker = LearningWorker(cfg, store, shared=shared)
    thread = threading.Thread(target=worker.run, name="llaca-worker", daemon=True)
    worker.thread = thread
    thread.start()
    return worker, thread
