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

A correction (a buffer item) has no status of its own: it is where its buffer is. It is
held out (``Split.HELDOUT``) to test the candidate, or trained on (``Split.TRAIN``).

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


BUFFER_OUTCOMES: tuple[BufferStatus, ...] = (BufferStatus.PROMOTED, BufferStatus.REJECTED)
"""How a claim ends (``FeedbackStore.finish_claim``)."""
