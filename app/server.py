"""Run the real app (``python app.py``) in a subprocess on 127.0.0.1 and a free port.

Used by the end-to-end tests and ``benchmarks/chat_latency.py``::

    with AppServer(model="models/llava-tiny", data_dir=tmp) as server:
        client = gradio_client.Client(server.url)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``python app.py --host 127.0.0.1 --port <free> --data-dir <dir> ...`` as a context manager
    (without the background learning worker unless ``worker=True``)."""

    def __init__(
        self,
        model: str | Path,
        data_dir: str | Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        threads: int = 1,
        timeout: float = 120.0,
        log_path: str | Path | None = None,
        worker: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"app-{self.port}.log"
        self.cmd = [
            sys.executable, str(ROOT / "app.py"), "--model", str(model), "--host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--threads", str(threads),
            *([] if worker else ["--no-worker"]), *args,
        ]
        self.env = {
            **os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads), **(env or {}),
        }
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AppServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the app did not answer on {self.url} within {self.timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the app with ``sig`` (SIGTERM, or SIGINT like Ctrl+C); SIGKILL after 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
