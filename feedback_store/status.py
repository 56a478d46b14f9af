"""The status vocabulary of LLaCA Studio, from the store to the UI and the API.

Every status word the store writes, the learning worker reports and the app or ``/status``
shows is defined here, once. The store imports nothing from ``llaca``, so the vocabulary
lives in the store's package and ``llaca``/``app`` import it from here.

Task buffers (``task_buffers.status``)::

    open --(size threshold | Teach now | idle timeout)--> ready
    ready --claimed by a worker (lease)--> training
    training --guard passed--> promoted      (the buffer's ``adapter_version`` is served now)
    training --guard refused--> rejected     (with the reason; the served version stays)
    training, lease expired --> ready, or rejected after too many attempts

A correction (a buffer item) is held out (``Split.HELDOUT``) to test the candidate, or
trained on (``Split.TRAIN``). What became of it (``correction_status``, ``CorrectionState``)::

    queued       its buffer is open or ready
    training     its buffer is being learned
    learned      a promoted version learned it (``learned_in``: trained on it, or, with
                 instruction groups, held out and answered right)
    held out     single-adapter methods: it tested the promoted version of its buffer
    pending      not learned yet (``pending_reason`` or the buffer's rejection); with
                 instruction groups it is trained again by its group's next run, until the
                 guard has refused ``MAX_REFUSALS`` runs that trained on it (a correction
                 that keeps failing, like "every colour is blue", must not hold its group
                 back forever); it then stays unlearned, with the reason

Adapter versions (``adapter_versions.status``)::

    candidate --promoted--> current --another promoted or rollback--> retired
    candidate --refused by the guard--> rejected

Only a promoted candidate takes a version number (``v1``, ``v2``, ...); a rejected one is
recorded under its buffer's candidate name (``buffer-7``), so served versions count up
without gaps.

Learning worker (``worker_status.state``): what it does now (``WorkerActivity``); after a
buffer it reports the buffer's outcome, ``promoted`` or ``rejected``.

The members are ``str`` enums: they compare equal to, and are stored as, their words.
"""

from __future__ import annotations

from enum import StrEnum


class BufferStatus(StrEnum):
    OPEN = "open"
    READY = "ready"
    TRAINING = "training"
    PROMOTED = "promoted"
    REJECTED = "rejected"


class AdapterStatus(StrEnum):
    CANDIDATE = "candidate"
    CURRENT = "current"
    RETIRED = "retired"
    REJECTED = "rejected"


class Split(StrEnum):
    TRAIN = "train"
    HELDOUT = "heldout"


class WorkerActivity(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    TRAINING = "training"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ERROR = "error"
    STOPPED = "stopped"


MAX_REFUSALS = 3
"""Guard refusals after which a correction is no longer trained again automatically."""


class CorrectionState(StrEnum):
    QUEUED = "queued"
    TRAINING = "training"
    LEARNED = "learned"
    HELD_OUT = "held out"
    PENDING = "pending"


def correction_status(item, buffer) -> tuple[CorrectionState, str]:
    """(state, words for the user) of one correction (``BufferItem``) of ``buffer``."""
    if item.learned_in:
        return CorrectionState.LEARNED, f"learned in {item.learned_in}"
    if buffer.status in (BufferStatus.OPEN, BufferStatus.READY):
        return CorrectionState.QUEUED, "queued for learning" if buffer.status == BufferStatus.READY else "queued"
    if buffer.status == BufferStatus.TRAINING:
        return CorrectionState.TRAINING, "being learned now"
    if item.pending_reason:
        if item.refusals >= MAX_REFUSALS:
            return CorrectionState.PENDING, (f"not retried: the guard refused the {item.refusals} runs that trained "
                                             f"on it; the last said: {item.pending_reason}")
        return CorrectionState.PENDING, item.pending_reason
    if buffer.status == BufferStatus.PROMOTED:
        if item.split == Split.HELDOUT:
            return CorrectionState.HELD_OUT, f"held out to test {buffer.adapter_version}"
        return CorrectionState.LEARNED, f"learned in {buffer.adapter_version}"
    reason = (buffer.reason or "no reason given").removeprefix("rejected: ")
    return CorrectionState.PENDING, f"not learned: its buffer was rejected ({reason})"


BUFFER_OUTCOMES: tuple[BufferStatus, ...] = (BufferStatus.PROMOTED, BufferStatus.REJECTED)
"""How a claim ends (``FeedbackStore.finish_claim``)."""
