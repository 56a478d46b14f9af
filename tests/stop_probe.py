"""Helper for the Stop tests: count the decoding steps a model runs, and those begun after Stop.

How many text chunks reach the consumer before it reacts to the first one depends on thread
scheduling (a loaded CI machine lets generation run ahead), so Stop is judged on the model:
once the event is set, at most the step already under way may follow. Each step is slowed a
little so that the answer is still being generated when the consumer presses Stop.
"""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def decoding_steps(model, stop: threading.Event, delay_s: float = 0.01):
    """Yield {"total", "after_stop"}: forward calls of `model` so far, and those started with `stop` set."""
    steps = {"total": 0, "after_stop": 0}

    def count(module, args, kwargs):
        steps["total"] += 1
        steps["after_stop"] += stop.is_set()
        time.sleep(delay_s)

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield steps
    finally:
        hook.remove()
