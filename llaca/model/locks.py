"""The two locks of the live assistant: hot swaps against generations, and which adapter is active.

`SwapLock`: generations share it, a swap (promotion, rollback) takes it exclusively, with
writer preference so a busy chat never starves a promotion.

`AdapterGate`: a routed system keeps one adapter per instruction group loaded in one peft
model, and peft's active adapter is one setting of the whole model. Generations that need
the same adapter run together; one that needs another adapter waits until they are done,
switches, and runs. Entry is first come, first served (a waiting request for another
adapter holds back later requests for the current one), so neither side starves, and no
generation ever sees the adapter change under it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager


class SwapLock:
    """A readers-writer lock with writer preference (generations read, swaps write)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()

    @property
    def readers(self) -> int:
        return self._readers


class AdapterGate:
    """Admits generations by the adapter they need ("mode"); a switch happens only when idle."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._mode: str | None = None  # the active adapter (None: nothing switched yet)
        self._holders = 0
        self.switches = 0

    @contextmanager
    def use(self, mode: str, activate: Callable[[str], None]):
        """Hold the model with adapter `mode` active; `activate(mode)` switches it when needed."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or (self._holders and self._mode != mode):
                self._cond.wait()
            self._queue.popleft()
            if self._mode != mode:  # no holder: safe to switch
                try:
                    activate(mode)
                except BaseException:
                    self._cond.notify_all()
                    raise
                self._mode = mode
                self.switches += 1
            self._holders += 1
            self._cond.notify_all()  # the next in line may share this mode
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    def reset(self) -> None:
        """Forget the active adapter (after a swap changed the loaded adapters); call it idle."""
        with self._cond:
            self._mode = None

    @property
    def holders(self) -> int:
        return self._holders
