"""Start and stop the app process: a port check before serving, and a bounded shutdown.

Shutdown is one ordered sequence with a deadline (``SHUTDOWN_SECONDS``), run on the main
thread when SIGTERM or SIGINT (Ctrl+C) arrives; the signal handler only records the signal,
so it can never land inside Gradio's start-up or a lock and leave the process half-stopped:

1. every running generation is told to stop, and the learning worker to abandon its run;
2. answers in flight are stored, as stopped where they were cut short (``app.answers``);
3. the HTTP server stops accepting, gives open connections (SSE streams, a streaming answer)
   a short grace, then closes them (uvicorn's ``force_exit``);
4. the learning worker gives its buffer back to the queue, writes "stopped" and ends;
5. the store is closed, one log line says how long it took, and the process exits at once
   (``os._exit``): no interpreter teardown runs under a native thread that is still busy
   (that teardown is what printed ``terminate called without an active exception``).

One log line marks the start and one the end, flushed, so a hang shows where it stopped. A
second signal during shutdown exits immediately.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger("llaca.app")

SHUTDOWN_SECONDS = 5.0  # the whole sequence, signal to exit
ANSWER_GRACE = 1.0  # for handlers to store their own stopped answers
SERVER_GRACE = 1.0  # for open connections to finish before they are closed


class PortBusyError(OSError):
    """The port to serve on is taken; the message says which and how to pick another."""


def busy_port_message(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another LLaCA Studio, or another program). "
            f"Choose another port: python app.py --port {port + 1}, or LLACA_PORT={port + 1}.")


def check_port(host: str, port: int) -> None:
    """Raise ``PortBusyError`` if (host, port) cannot be bound now (the check Gradio makes,
    with our own words: Gradio's names its own GRADIO_SERVER_PORT variable)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise PortBusyError(busy_port_message(host, port)) from e


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()


class Shutdown:
    """SIGTERM/SIGINT -> ``requested``; ``run`` performs the bounded sequence (module docstring)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self.serving = False  # before the server is up, a signal just ends start-up

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            os.write(2, f"{name} again during shutdown: exiting now\n".encode())
            os._exit(1)
        self.signal_name = name
        self.requested.set()
        if not self.serving:  # still loading: nothing to drain, stop start-up where it is
            raise KeyboardInterrupt(name)

    def wait(self) -> None:
        """Block the main thread until a signal asks to stop."""
        while not self.requested.wait(0.5):
            pass

    def run(self, demo, services, exit_code: int = 0) -> None:
        """Stop everything within ``SHUTDOWN_SECONDS`` and exit the process with ``exit_code``."""
        t0 = time.monotonic()
        deadline = t0 + SHUTDOWN_SECONDS - 0.5
        log.info("shutting down (%s): stopping answers in flight and the learning worker", self.signal_name or "exit")
        _flush_logs()
        worker = services.worker
        try:
            stopped = services.stops.stop()
            if worker is not None:
                worker.stop.set()
                if (abort := getattr(worker, "_abort", None)) is not None:
                    abort.set()
            cut = services.answers.drain(wait=ANSWER_GRACE if stopped else 0.0)
            if stopped or cut:
                log.info("shutdown: %d generation(s) stopped, %d answer(s) stored as cut short by shutdown", stopped, cut)
            self._close_server(demo, min(SERVER_GRACE, max(0.0, deadline - time.monotonic())))
            if worker is not None:
                worker.shutdown(timeout=max(0.1, deadline - time.monotonic()))
            services.store.close()
        except BaseException:
            log.exception("shutdown step failed; exiting anyway")
            exit_code = exit_code or 1
        busy = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()
                and not t.daemon]
        log.info("shut down in %.1f s%s", time.monotonic() - t0,
                 f" (threads still running, ended by the exit: {', '.join(busy)})" if busy else "")
        _flush_logs()
        logging.shutdown()
        os._exit(exit_code)

    @staticmethod
    def _close_server(demo, grace: float) -> None:
        """Gradio's ``close`` without its unbounded waits: stop the queue, stop accepting, give
        open connections ``grace`` s, then close them."""
        server = getattr(demo, "server", None)
        try:
            demo._queue.close()
        except Exception:
            pass
        demo.is_running = False
        if getattr(demo, "app", None) is not None and hasattr(demo.app, "stop_event"):
            demo.app.stop_event.set()
        if server is None:
            return
        server.should_exit = True
        thread = getattr(server, "thread", None)
        if thread is None:
            return
        thread.join(grace)
        if thread.is_alive():
            server.force_exit = True  # uvicorn stops waiting for open connections and closes them
            thread.join(0.5)
