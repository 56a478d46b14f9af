"""Whether a learning worker is alive, judged from its last report in the store.

The one rule shared by the worker's heartbeat (``llaca.worker``), the app's status line and
the ``/status`` endpoint (``app.panels``, ``app.api``). A worker writes its state to the
store's ``worker_status`` table at every change and at least every ``HEARTBEAT_SECONDS``
while it runs, and writes ``stopped`` when it shuts down cleanly (SIGTERM, Ctrl+C). So:

- **live**: reported within ``STALE_SECONDS`` and not stopped;
- **not responding**: silent for longer than that without saying it stopped (killed,
  crashed, frozen, or its machine is gone). The status line shows it for
  ``HIDE_AFTER_SECONDS``, long enough to notice a crash, then leaves it out;
- **stopped**: shut down cleanly; never shown in the status line.

``/status`` lists all three groups separately.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from feedback_store import WorkerActivity, WorkerState

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 120.0  # four missed heartbeats
HIDE_AFTER_SECONDS = 900.0


@dataclass(frozen=True)
class WorkerGroups:
    live: list[WorkerState]
    not_responding: list[WorkerState]
    stopped: list[WorkerState]

    def shown(self, now: float | None = None) -> tuple[list[WorkerState], list[WorkerState]]:
        """(live, not responding) as the status line shows them: silent ones only for a while."""
        now = time.time() if now is None else now
        return self.live, [w for w in self.not_responding if now - w.updated_at <= HIDE_AFTER_SECONDS]


def classify(workers: Sequence[WorkerState], now: float | None = None) -> WorkerGroups:
    now = time.time() if now is None else now
    live, silent, stopped = [], [], []
    for w in workers:
        if w.state == WorkerActivity.STOPPED:
            stopped.append(w)
        elif now - w.updated_at > STALE_SECONDS:
            silent.append(w)
        else:
            live.append(w)
    return WorkerGroups(live, silent, stopped)
