"""One settings object for LLaCA Studio, built from command-line flags and `LLACA_*` variables.

This is the only module that reads `LLACA_*` variables. The app (`app.py`), the learning
worker run on its own (`python -m llaca.worker`) and the training command (`python -m
llaca.tune`) all build their `Settings` here, from the same flags and variables, so the same
environment configures the in-app worker and a worker process alike (`WorkerConfig.from_settings`).
A command adds the flags it uses (`add_flags(parser, names)`) and still reads every variable.

Precedence: a flag given on the command line, then the `LLACA_*` environment variable, then
the default. The environment is read only when `Settings.from_args` is called (never at
import time), and an explicit `env` mapping can be passed for tests.

| flag              | variable              | default              |
|-------------------|-----------------------|----------------------|
| --model           | LLACA_MODEL           | models/llava-tiny    |
| --data-dir        | LLACA_DATA_DIR        | ./data               |
| --host            | LLACA_HOST            | 127.0.0.1 (*)        |
| --port            | LLACA_PORT            | 7860 (*)             |
| --admin-password  | LLACA_ADMIN_PASSWORD  | none (admin actions disabled) |
| --buffer-size     | LLACA_BUFFER_SIZE     | 8                    |
| --device          | LLACA_DEVICE          | auto (cuda if available) |
| --dtype           | LLACA_DTYPE           | auto (bf16 on GPU, fp32 on CPU) |
| --concurrency     | LLACA_CONCURRENCY     | max-batch, or 2 with --max-batch 1 (model events at once) |
| --max-queue       | LLACA_MAX_QUEUE       | 64                   |
| --threads         | LLACA_THREADS         | torch default        |
| --max-batch       | LLACA_MAX_BATCH       | 8 (answers decoded together; 1 = each on its own, with its own worker model copy) |
| --max-loaded-adapters | LLACA_MAX_LOADED_ADAPTERS | 8 (group adapters resident in the model; the rest load from disk when asked for) |
| --poll-seconds    | LLACA_POLL_SECONDS    | 2.0 (status refresh) |
| --no-worker       | LLACA_WORKER=0        | worker on            |
| --learn-method    | LLACA_LEARN_METHOD    | llaca+groups+transfer (or another group method: llaca+groups, +probe, +scene, +subspace, +similar, +merged) |
| --tune-method     | LLACA_TUNE_METHOD     | llaca+replay (how a group continues: seq, ema, llaca, seq+replay, llaca+replay) |
| --learn-steps     | LLACA_LEARN_STEPS     | 80 optimizer steps per buffer |
| --guard-margin    | LLACA_GUARD_MARGIN    | 5 points             |
| --idle-ready      | LLACA_IDLE_READY      | 900 s (an idle open buffer becomes ready; 0 = never) |
| --worker-threads  | LLACA_WORKER_THREADS  | 1 (torch CPU threads of the learning worker; the rest serve chat) |
| --train-command   | LLACA_TRAIN_COMMAND   | none: the worker trains in its own process; e.g. "accelerate launch --num_processes 4 -m llaca.tune" |
| --log-level       | LLACA_LOG_LEVEL       | INFO (WARNING for llaca.tune) |
| --teach           | LLACA_TEACH           | anyone; review on a Space (SPACE_ID set) |
| --teachers        | LLACA_TEACHERS        | none (comma-separated user names whose corrections skip review) |
| --quotas          | LLACA_QUOTAS          | public on a Space or a non-loopback host, else local (QUOTA_DEFAULTS) |
| --questions-per-minute | LLACA_QUESTIONS_PER_MINUTE | per author: 20 public, 600 local |
| --max-new-tokens  | LLACA_MAX_NEW_TOKENS  | 1024 (the most an answer may ask for) |
| --corrections-per-hour | LLACA_CORRECTIONS_PER_HOUR | per author: 60 public, 2000 local |
| --waiting-buffers | LLACA_WAITING_BUFFERS | per author, ready or training: 3 public, 50 local |
| --pending-reviews | LLACA_PENDING_REVIEWS | per author, waiting for review: 48 public, 1000 local |
| --image-mb-per-day | LLACA_IMAGE_MB_PER_DAY | per author: 50 public, 2000 local |

(*) When no LLACA_HOST/LLACA_PORT is set, Gradio's own GRADIO_SERVER_NAME/GRADIO_SERVER_PORT
are honoured, so a Hugging Face Space (which sets GRADIO_SERVER_NAME=0.0.0.0) works unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from llaca.config.methods import (
    DEFAULT_TUNE_METHOD,
    DEFAULT_WORKER_METHOD,
    GROUP_METHODS,
    TUNER_METHODS,
)

DEFAULT_MODEL = "models/llava-tiny"
TEACH_POLICIES = ("anyone", "review")  # who may teach: everyone, or trusted teachers and what the admin approves
QUOTA_DEFAULTS: dict[str, dict[str, float]] = {
    # a public deployment (a Space, or an app bound to a non-loopback address): one author is one person
    "public": {"questions_per_minute": 20, "corrections_per_hour": 60, "waiting_buffers": 3, "pending_reviews": 48,
               "image_mb_per_day": 50.0},
    # the owner's own machine: scripts and benchmarks teach hundreds of corrections; still finite
    "local": {"questions_per_minute": 600, "corrections_per_hour": 2000, "waiting_buffers": 50,
              "pending_reviews": 1000, "image_mb_per_day": 2000.0},
}
"""Per-author quota defaults by deployment (``Settings.quotas``); each can be set on its own."""
QUOTA_NAMES = tuple(QUOTA_DEFAULTS["public"])


def is_loopback_host(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A flag or LLACA_* variable has an unusable value; the message names it."""


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 7860
    admin_password: str | None = None
    buffer_size: int = 8
    device: str | None = None
    dtype: str | None = None
    concurrency: int | None = None  # model events at once (None: max_batch, or 2 when each answer runs alone)
    max_queue: int = 64
    threads: int | None = None
    max_batch: int = 8  # answers decoded together in one batch (1: each answer its own generate, as before)
    max_loaded_adapters: int = 8  # served adapters resident in the model at once, least recently used out
    poll_seconds: float = 2.0
    worker: bool = True
    learn_method: str = DEFAULT_WORKER_METHOD  # a group method: how corrections are grouped, where a new group starts
    tune_method: str = DEFAULT_TUNE_METHOD  # how a group that has an adapter continues (a tuner method)
    learn_steps: int = 80
    guard_margin: float = 5.0
    idle_ready: float = 900.0
    worker_threads: int | None = 1
    train_command: str | None = None
    log_level: str | None = None  # None: the command's own default (`configure_logging`)
    teach: str = "anyone"  # TEACH_POLICIES; from_namespace defaults to review on a Space
    teachers: tuple[str, ...] = ()  # trusted teachers: their corrections skip review
    quotas: str = "local"  # QUOTA_DEFAULTS' key: the defaults of the per-author quotas below
    questions_per_minute: int | None = None  # per author (None: QUOTA_DEFAULTS[quotas])
    max_new_tokens: int = 1024  # the most one answer may ask for
    corrections_per_hour: int | None = None  # per author
    waiting_buffers: int | None = None  # per author: buffers ready or training
    pending_reviews: int | None = None  # per author: corrections waiting for review
    image_mb_per_day: float | None = None  # per author: stored image megabytes
    on_space: bool = False  # SPACE_ID is set: running as a Hugging Face Space

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not 0 < self.port < 65536:
            raise SettingsError(f"port must be between 1 and 65535, got {self.port}")
        if self.concurrency is None:
            object.__setattr__(self, "concurrency", self.max_batch if self.max_batch > 1 else 2)
        for name in ("buffer_size", "concurrency", "max_queue"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.max_batch <= 256:
            raise SettingsError(f"max-batch must be between 1 and 256, got {self.max_batch}")
        if self.max_loaded_adapters < 1:
            raise SettingsError(f"max-loaded-adapters must be at least 1, got {self.max_loaded_adapters}")
        if self.threads is not None and self.threads < 1:
            raise SettingsError(f"threads must be at least 1, got {self.threads}")
        if not self.poll_seconds > 0:
            raise SettingsError(f"poll-seconds must be positive, got {self.poll_seconds}")
        if self.learn_method in TUNER_METHODS:
            raise SettingsError(f"learn-method {self.learn_method!r} is a method within a group now: set "
                                f"tune-method {self.learn_method} (LLACA_TUNE_METHOD), and learn-method to one of "
                                f"{', '.join(GROUP_METHODS)} (default {DEFAULT_WORKER_METHOD})")
        if self.learn_method not in GROUP_METHODS:
            raise SettingsError(f"learn-method must be one of {', '.join(GROUP_METHODS)}, got {self.learn_method!r}")
        if self.tune_method not in TUNER_METHODS:
            raise SettingsError(f"tune-method must be one of {', '.join(TUNER_METHODS)}, got {self.tune_method!r}")
        if self.learn_steps < 1:
            raise SettingsError(f"learn-steps must be at least 1, got {self.learn_steps}")
        if self.guard_margin < 0 or self.idle_ready < 0:
            raise SettingsError("guard-margin and idle-ready must not be negative")
        if self.worker_threads is not None and self.worker_threads < 1:
            raise SettingsError(f"worker-threads must be at least 1, got {self.worker_threads}")
        if self.train_command is not None:
            import shlex

            try:
                if not shlex.split(self.train_command):
                    raise ValueError("it is empty")
            except ValueError as e:
                raise SettingsError(f"train-command {self.train_command!r} is not a usable command: {e}") from None
        if self.teach not in TEACH_POLICIES:
            raise SettingsError(f"teach must be one of {', '.join(TEACH_POLICIES)}, got {self.teach!r}")
        object.__setattr__(self, "teachers", tuple(t.strip() for t in self.teachers if t and t.strip()))
        if self.quotas not in QUOTA_DEFAULTS:
            raise SettingsError(f"quotas must be one of {', '.join(QUOTA_DEFAULTS)}, got {self.quotas!r}")
        for name in QUOTA_NAMES:
            if getattr(self, name) is None:
                object.__setattr__(self, name, QUOTA_DEFAULTS[self.quotas][name])
        for name in ("questions_per_minute", "max_new_tokens", "corrections_per_hour", "waiting_buffers",
                     "pending_reviews"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.image_mb_per_day > 0:
            raise SettingsError(f"image-mb-per-day must be positive, got {self.image_mb_per_day}")
        if self.log_level is not None:
            object.__setattr__(self, "log_level", self.log_level.upper())
            if not isinstance(logging.getLevelName(self.log_level), int):
                raise SettingsError(f"log-level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_password)

    def is_teacher(self, author: str | None) -> bool:
        """Whether ``author``'s corrections train without review."""
        return self.teach == "anyone" or (author is not None and author in self.teachers)

    def check_app(self) -> None:
        """What only the app needs: under ``review`` someone must be able to review."""
        if self.teach == "review" and not self.admin_enabled:
            raise SettingsError(
                "teach=review needs an admin password to review corrections: set LLACA_ADMIN_PASSWORD "
                "(or --admin-password), or let anyone teach with LLACA_TEACH=anyone"
                + (" (review is the default on a Space)" if self.on_space else ""))

    def configure_logging(self, default: str = "INFO", fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        """Set up the root logger at the `log_level` setting (``default`` when it is unset)."""
        logging.basicConfig(level=self.log_level or default, format=fmt)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> "Settings":
        """Parse the app's flags (``argv``; default: none) over ``env`` (default: ``os.environ``)."""
        return cls.from_namespace(build_parser().parse_args(list(argv or [])), env)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from parsed flags (a command's own parser, from ``build_parser(flags=...)``)
        over ``env`` (default: ``os.environ``); a flag the parser does not offer comes from the
        environment or its default."""
        env = os.environ if env is None else env
        args = argparse.Namespace(**{name: getattr(args, name, None) for name in FLAGS}, no_worker=getattr(args, "no_worker", False))

        def pick(flag_value, *names: str, default=None):
            if flag_value is not None:
                return flag_value
            for name in names:
                value = env.get(name)
                if value not in (None, ""):
                    return value
            return default

        def as_int(value, what: str) -> int | None:
            if value is None:
                return None
            try:
                return int(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{what} must be an integer, got {value!r}") from None

        def as_float(value, what: str) -> float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{what} must be a number, got {value!r}") from None

        on_space = bool(env.get("SPACE_ID"))
        host = str(pick(args.host, "LLACA_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"))
        worker_env = str(env.get("LLACA_WORKER", "1")).strip().lower()
        if worker_env not in _TRUE | _FALSE:
            raise SettingsError(f"LLACA_WORKER must be 1/0 (or true/false), got {worker_env!r}")
        worker = False if args.no_worker else worker_env in _TRUE

        return cls(
            model=str(pick(args.model, "LLACA_MODEL", default=DEFAULT_MODEL)),
            data_dir=Path(pick(args.data_dir, "LLACA_DATA_DIR", default="data")),
            host=host,
            port=as_int(pick(args.port, "LLACA_PORT", "GRADIO_SERVER_PORT", default=7860), "port"),
            admin_password=pick(args.admin_password, "LLACA_ADMIN_PASSWORD") or None,
            buffer_size=as_int(pick(args.buffer_size, "LLACA_BUFFER_SIZE", default=8), "buffer size"),
            device=pick(args.device, "LLACA_DEVICE"),
            dtype=pick(args.dtype, "LLACA_DTYPE"),
            concurrency=as_int(pick(args.concurrency, "LLACA_CONCURRENCY"), "concurrency"),
            max_queue=as_int(pick(args.max_queue, "LLACA_MAX_QUEUE", default=64), "max queue"),
            threads=as_int(pick(args.threads, "LLACA_THREADS"), "threads"),
            max_batch=as_int(pick(args.max_batch, "LLACA_MAX_BATCH", default=8), "max batch"),
            max_loaded_adapters=as_int(pick(args.max_loaded_adapters, "LLACA_MAX_LOADED_ADAPTERS", default=8),
                                       "max loaded adapters"),
            poll_seconds=as_float(pick(args.poll_seconds, "LLACA_POLL_SECONDS", default=2.0), "poll seconds"),
            worker=worker,
            learn_method=str(pick(args.learn_method, "LLACA_LEARN_METHOD", default=DEFAULT_WORKER_METHOD)),
            tune_method=str(pick(args.tune_method, "LLACA_TUNE_METHOD", default=DEFAULT_TUNE_METHOD)),
            learn_steps=as_int(pick(args.learn_steps, "LLACA_LEARN_STEPS", default=80), "learn steps"),
            guard_margin=as_float(pick(args.guard_margin, "LLACA_GUARD_MARGIN", default=5.0), "guard margin"),
            idle_ready=as_float(pick(args.idle_ready, "LLACA_IDLE_READY", default=900.0), "idle ready"),
            worker_threads=as_int(pick(args.worker_threads, "LLACA_WORKER_THREADS", default=1), "worker threads"),
            train_command=pick(args.train_command, "LLACA_TRAIN_COMMAND") or None,
            log_level=pick(args.log_level, "LLACA_LOG_LEVEL"),
            teach=str(pick(args.teach, "LLACA_TEACH", default="review" if on_space else "anyone")).strip().lower(),
            teachers=tuple(str(pick(args.teachers, "LLACA_TEACHERS", default="")).split(",")),
            quotas=str(pick(args.quotas, "LLACA_QUOTAS", default="public" if on_space or not is_loopback_host(host)
                                 else "local")).strip().lower(),
            questions_per_minute=as_int(pick(args.questions_per_minute, "LLACA_QUESTIONS_PER_MINUTE"),
                                        "questions per minute"),
            max_new_tokens=as_int(pick(args.max_new_tokens, "LLACA_MAX_NEW_TOKENS", default=1024), "max new tokens"),
            corrections_per_hour=as_int(pick(args.corrections_per_hour, "LLACA_CORRECTIONS_PER_HOUR"),
                                        "corrections per hour"),
            waiting_buffers=as_int(pick(args.waiting_buffers, "LLACA_WAITING_BUFFERS"), "waiting buffers"),
            pending_reviews=as_int(pick(args.pending_reviews, "LLACA_PENDING_REVIEWS"), "pending reviews"),
            image_mb_per_day=(None if (mb := pick(args.image_mb_per_day, "LLACA_IMAGE_MB_PER_DAY")) is None
                              else as_float(mb, "image MB per day")),
            on_space=on_space,
        )


FLAGS: dict[str, dict] = {
    "model": dict(help=f"LLaVA hub id or local folder (default {DEFAULT_MODEL}; LLACA_MODEL)"),
    "data_dir": dict(help="where the store, images and adapters live (default ./data; LLACA_DATA_DIR)"),
    "host": dict(help="address to bind (default 127.0.0.1; LLACA_HOST)"),
    "port": dict(type=int, help="port (default 7860; LLACA_PORT)"),
    "admin_password": dict(help="enables rollback and other admin actions (default: none, disabled; LLACA_ADMIN_PASSWORD)"),
    "buffer_size": dict(type=int, help="corrections that make a buffer ready to learn (default 8; LLACA_BUFFER_SIZE)"),
    "device": dict(help="cpu, cuda, cuda:1 ... (default: cuda if available; LLACA_DEVICE)"),
    "dtype": dict(help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU; LLACA_DTYPE)"),
    "concurrency": dict(type=int, help="model events that may run at once (default: --max-batch, so every answer "
                                       "in flight can join the batch; 2 with --max-batch 1; LLACA_CONCURRENCY)"),
    "max_queue": dict(type=int, help="requests allowed to wait in the queue (default 64; LLACA_MAX_QUEUE)"),
    "threads": dict(type=int, help="torch CPU threads (default: torch's choice; LLACA_THREADS)"),
    "max_batch": dict(type=int, help="answers decoded together in one batch, each on its own group's adapter "
                                     "(default 8; 1 answers each on its own; LLACA_MAX_BATCH)"),
    "max_loaded_adapters": dict(type=int, help="group adapters resident in the model at once; the least recently "
                                               "used is unloaded first (default 8; LLACA_MAX_LOADED_ADAPTERS)"),
    "poll_seconds": dict(type=float, help="how often the UI refreshes learning status (default 2; LLACA_POLL_SECONDS)"),
    "learn_method": dict(help=f"how the learning worker groups corrections: {', '.join(GROUP_METHODS)} (one adapter "
                              "per instruction group, questions routed; they differ in which group a new wording "
                              f"joins and where a new group's adapter starts; default {DEFAULT_WORKER_METHOD}; "
                              "LLACA_LEARN_METHOD)"),
    "tune_method": dict(help=f"how a group that has an adapter continues: {', '.join(TUNER_METHODS)} (default "
                             f"{DEFAULT_TUNE_METHOD}: the LLaCA adaptive EMA with replay of the group's learned "
                             "corrections; a new group trains with seq; LLACA_TUNE_METHOD)"),
    "learn_steps": dict(type=int, help="optimizer steps per buffer (default 80; LLACA_LEARN_STEPS)"),
    "guard_margin": dict(type=float, help="points an earlier task or a base probe may lose before a candidate is "
                                          "rejected (default 5; LLACA_GUARD_MARGIN)"),
    "idle_ready": dict(type=float, help="seconds after which an idle open buffer is learned (default 900, 0 = never; LLACA_IDLE_READY)"),
    "worker_threads": dict(type=int, help="torch CPU threads of the learning worker (default 1; LLACA_WORKER_THREADS)"),
    "train_command": dict(help="the worker trains through this command, e.g. 'accelerate launch --num_processes 4 -m llaca.tune' "
                               "(default: in its own process; LLACA_TRAIN_COMMAND)"),
    "log_level": dict(help="DEBUG, INFO, WARNING or ERROR (default INFO; WARNING for llaca.tune; LLACA_LOG_LEVEL)"),
    "teach": dict(choices=TEACH_POLICIES, help="who may teach: anyone (every correction trains), or review (only trusted "
                                               "teachers' and admin-approved corrections train; needs an admin password) "
                                               "(default anyone; review on a Space; LLACA_TEACH)"),
    "teachers": dict(help="comma-separated user names whose corrections skip review (default none; LLACA_TEACHERS)"),
    "quotas": dict(choices=tuple(QUOTA_DEFAULTS), help="the per-author quota defaults: public (a Space, or a "
                                                       "non-loopback --host) or local (default: by deployment; "
                                                       "LLACA_QUOTAS)"),
    "questions_per_minute": dict(type=int, help="questions one author may ask per minute (default 20 public, 600 "
                                                "local; LLACA_QUESTIONS_PER_MINUTE)"),
    "max_new_tokens": dict(type=int, help="the most tokens one answer may ask for (default 1024; LLACA_MAX_NEW_TOKENS)"),
    "corrections_per_hour": dict(type=int, help="corrections one author may save per hour (default 60 public, 2000 local; "
                                                "LLACA_CORRECTIONS_PER_HOUR)"),
    "waiting_buffers": dict(type=int, help="buffers one author may have waiting to be learned (default 3 public, 50 local; "
                                           "LLACA_WAITING_BUFFERS)"),
    "pending_reviews": dict(type=int, help="corrections one author may have waiting for review (default 48 public, 1000 local; "
                                           "LLACA_PENDING_REVIEWS)"),
    "image_mb_per_day": dict(type=float, help="megabytes of images one author may upload per day (default 50 public, 2000 local; "
                                              "LLACA_IMAGE_MB_PER_DAY)"),
}
"""The flag of each setting (``--data-dir`` for ``data_dir``), with its help; ``--no-worker`` is the app's."""

WORKER_FLAGS: tuple[str, ...] = ("model", "data_dir", "device", "learn_method", "tune_method", "learn_steps", "guard_margin",
                                 "idle_ready", "worker_threads", "train_command", "log_level")
"""The settings a learning worker uses: `python -m llaca.worker` offers these flags."""


def add_flags(ap: argparse.ArgumentParser, flags: Iterable[str]) -> argparse.ArgumentParser:
    """Add the flags of the named settings (keys of ``FLAGS``) to ``ap``; parse, then ``Settings.from_namespace``."""
    for name in flags:
        ap.add_argument("--" + name.replace("_", "-"), **FLAGS[name])
    return ap


def build_parser() -> argparse.ArgumentParser:
    """The app's parser: every setting's flag and ``--no-worker``."""
    ap = argparse.ArgumentParser(
        prog="app.py",
        description="LLaCA Studio: chat about images, correct wrong answers, and let the model learn from them.",
        epilog="Every flag also reads an LLACA_* environment variable (see llaca/config/settings.py).",
    )
    add_flags(ap, FLAGS)
    ap.add_argument("--no-worker", action="store_true", help="do not start the background learning worker (LLACA_WORKER=0)")
    return ap
