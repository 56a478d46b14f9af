"""LLaCA Studio: chat about images, correct wrong answers, and let the model learn from them.

Entry point (also the Hugging Face Space's ``app_file``). With no arguments it serves the
embedded tiny model on http://127.0.0.1:7860 with the data in ./data:

    python app.py
    python app.py --model llava-hf/llava-1.5-7b-hf --data-dir /mnt/bucket/llaca --host 0.0.0.0
    LLACA_ADMIN_PASSWORD=... python app.py       # enables review, rollback and forgetting in the dashboard
    LLACA_TEACH=review LLACA_ADMIN_PASSWORD=... python app.py   # only approved corrections train

Every flag has an ``LLACA_*`` environment variable (see ``llaca/config/settings.py``).
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger("llaca.app")


def start_learning_worker(settings, store, shared=None):
    """HOOK: start the background learning worker (``llaca.worker``) in this process.

    It claims ready buffers from the same store, trains, guards and promotes; the app's
    assistant picks promotions up between answers. Off with ``--no-worker`` /
    ``LLACA_WORKER=0``, e.g. when the worker runs as its own process on the same host
    (``python -m llaca.worker --data-dir <same dir>``). With ``shared`` (the batched
    assistant's ``SharedModel``) it trains on the served model's base weights: one copy of
    the model in the process. Returns the worker (or None).
    """
    if not settings.worker:
        log.info("learning worker disabled (--no-worker / LLACA_WORKER=0)")
        return None
    from llaca.worker.loop import WorkerConfig, start_background

    cfg = WorkerConfig(settings)  # the same configuration as `python -m llaca.worker` under the same variables
    worker, _thread = start_background(cfg, store, shared=shared)
    log.info("learning worker %s started in the background", cfg.worker_id)
    return worker


def main(argv: list[str] | None = None) -> int:
    from app.lifecycle import PortBusyError, Shutdown, busy_port_message, check_port
    from llaca.config.settings import Settings, SettingsError

    try:
        settings = Settings.from_args(sys.argv[1:] if argv is None else argv)
        settings.check_app()  # e.g. review without an admin password: refuse to start, and say why
    except SettingsError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    settings.configure_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        check_port(settings.host, settings.port)  # before minutes of model loading, not after
    except PortBusyError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 1
    # SIGTERM (a service manager, a Space restart, `kill`) and Ctrl+C stop the app the same way:
    # while loading they end start-up; once serving, one bounded sequence (app.lifecycle).
    shutdown = Shutdown()
    shutdown.install()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    from app import build_app, create_services, launch_kwargs
    from app.errors import user_message
    from feedback_store import StoreError
    from llaca.model.llava import ModelLoadError

    try:
        services = create_services(settings)
    except (ModelLoadError, StoreError) as e:
        print(f"app.py: {user_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.info("stopped (%s) while starting", shutdown.signal_name)
        return 0
    shutdown.serving = True  # from here on a signal only asks; the main thread does the stopping
    services.worker = start_learning_worker(settings, services.store, getattr(services.assistant, "shared", None))
    demo = build_app(services)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)
    try:
        demo.launch(**launch_kwargs(services), prevent_thread_lock=True)
    except OSError as e:  # the port was taken between the check and the bind
        print(f"app.py: error: {busy_port_message(settings.host, settings.port)} ({e})", file=sys.stderr)
        shutdown.run(demo, services, exit_code=1)
    if not shutdown.requested.is_set():
        log.info("serving %s on http://%s:%d (data in %s)", settings.model, settings.host, demo.server_port,
                 settings.data_dir)
        shutdown.wait()
    shutdown.run(demo, services)  # exits the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
