"""`python -m llaca.worker`: the learning worker as its own process.

It reads the same flags and `LLACA_*` variables as the app's in-app worker (the shared
`Settings`, `llaca.config.WORKER_FLAGS`), plus a few knobs of its own that no variable sets
(learning rate, lease, claim polling, probes, ``--once``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llaca.config.settings import WORKER_FLAGS, Settings, SettingsError, add_flags
from llaca.worker import loop as worker_module
from llaca.worker.loop import LearningWorker, WorkerConfig

log = logging.getLogger("llaca.worker")


def build_parser() -> argparse.ArgumentParser:
    d = WorkerConfig
    ap = argparse.ArgumentParser(prog="python -m llaca.worker", description=worker_module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="The shared flags also read the LLACA_* variables the app reads (llaca/config/settings.py).")
    add_flags(ap, WORKER_FLAGS)
    ap.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    ap.add_argument("--lease", type=float, default=d.lease_seconds,
                    help=f"seconds a claimed buffer stays ours without a heartbeat (default {d.lease_seconds:g})")
    ap.add_argument("--poll", type=float, default=d.claim_poll_seconds,
                    help=f"seconds between looks for a ready buffer (default {d.claim_poll_seconds:g})")
    ap.add_argument("--probe-data", type=Path, nargs="*", default=[],
                    help="LLaVA-format folders of base probes (default: synthetic colour and shape probes)")
    ap.add_argument("--probe-n", type=int, default=d.probe_n, help=f"synthetic probe samples per base family (default {d.probe_n})")
    ap.add_argument("--once", action="store_true", help="handle at most one ready buffer, then exit")
    ap.add_argument("--crash-at", default=None, help=argparse.SUPPRESS)  # crash tests only
    return ap


def config_from_args(argv: list[str] | None = None, env=None) -> tuple[WorkerConfig, argparse.Namespace]:
    """The worker's configuration from its flags over ``env`` (default: the environment)."""
    args = build_parser().parse_args(argv)
    cfg = WorkerConfig(Settings.from_namespace(args, env), lr=args.lr, lease_seconds=args.lease,
                       claim_poll_seconds=args.poll, probe_n=args.probe_n, probe_data=args.probe_data,
                       crash_at=args.crash_at)
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    import signal

    try:
        cfg, args = config_from_args(argv)
    except SettingsError as e:
        print(f"python -m llaca.worker: error: {e}", file=sys.stderr)
        return 2
    cfg.settings.configure_logging(fmt="%(asctime)s %(name)s: %(message)s")
    worker = LearningWorker(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops cleanly, like Ctrl+C
    try:
        if args.once:
            worker.prepare()
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
