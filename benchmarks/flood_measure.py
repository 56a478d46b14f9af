"""How `benchmarks/flood.py` measures a run, from outside the app while it runs.

Latency quantiles (`pct`, `stats`), CPU use per phase (`Meter`: the app's, this process's, the
whole machine's and so everyone else's, from /proc and getrusage) and the learning queue
(`Monitor`: every buffer's status in the store, read-only, polled in a thread, each change kept
with its time).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import threading
import time
from pathlib import Path


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile (0..1), linear between order statistics."""
    if not xs:
        return None
    s = sorted(xs)
    i = (len(s) - 1) * q
    lo = int(i)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (i - lo)


def stats(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_s": pct(xs, 0.5), "p95_s": pct(xs, 0.95), "mean_s": statistics.mean(xs) if xs else None,
            "max_s": max(xs) if xs else None}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def system_busy() -> float:
    """CPU seconds all cores of this machine spent busy since boot (/proc/stat)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU use during a phase: the app's, this process's (client B, the monitor), the whole
    machine's, and so everyone else's (other processes on a shared machine; client A's when
    its own figure is subtracted)."""

    def __init__(self, pid: int) -> None:
        import resource

        self.pid, self.resource = pid, resource
        self.w0, self.app0, self.self0, self.sys0 = time.time(), proc_cpu(pid), self.own(), system_busy()

    def own(self) -> float:
        ru = self.resource.getrusage(self.resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def stop(self, a_client_cpu_s: float | None = None) -> dict:
        wall, app, own, busy = time.time() - self.w0, proc_cpu(self.pid) - self.app0, self.own() - self.self0, \
            system_busy() - self.sys0
        others = busy - app - own - (a_client_cpu_s or 0.0)
        return {"wall_s": wall, "app_cpu_s": app, "client_b_cpu_s": own, "a_client_cpu_s": a_client_cpu_s,
                "machine_busy_s": busy, "others_cpu_s": others, "app_cpu_share": app / wall,
                "others_cpu_share": others / wall, "loadavg_1m_at_end": os.getloadavg()[0]}


class Monitor(threading.Thread):
    """Reads every buffer's status from the store every `period` s; keeps the changes, timestamped."""

    QUERY = """SELECT tb.id, tb.status, s.author, tb.ready_at, tb.reason,
                      (SELECT count(*) FROM buffer_items bi WHERE bi.buffer_id = tb.id) AS size,
                      (SELECT avg(length(bi.question) + length(bi.answer)) FROM buffer_items bi
                       WHERE bi.buffer_id = tb.id) AS item_chars
               FROM task_buffers tb JOIN sessions s ON s.id = tb.session_id"""

    def __init__(self, db: Path, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.db, self.period = db, period
        self.now: dict[int, dict] = {}
        self.changes: list[dict] = []  # {t, id, author, status, size}
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.errors = 0

    def read(self) -> dict[int, dict]:
        conn = sqlite3.connect(str(self.db), timeout=5)
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.row_factory = sqlite3.Row
            return {r["id"]: dict(r) for r in conn.execute(self.QUERY)}
        finally:
            conn.close()

    def poll(self) -> dict[int, dict]:
        try:
            rows = self.read()
        except sqlite3.Error:
            self.errors += 1
            return self.now
        t = time.time()
        with self.lock:
            for i, r in rows.items():
                if i not in self.now or self.now[i]["status"] != r["status"]:
                    self.changes.append({"t": t, "id": i, "author": r["author"], "status": r["status"],
                                         "size": r["size"], "item_chars": r["item_chars"], "reason": r["reason"]})
            self.now = rows
        return rows

    def training(self) -> bool:
        with self.lock:
            return any(r["status"] == "training" for r in self.now.values())

    def when(self, buffer_id: int, statuses) -> float | None:
        with self.lock:
            return next((c["t"] for c in self.changes if c["id"] == buffer_id and c["status"] in statuses), None)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.poll()
            self.stopped.wait(self.period)
