"""The metrics record of one adapter candidate: what the learning worker measured, as stored.

Like peft's ``LoraConfig`` and its ``adapter_config.json``, the record is a dataclass with
``to_dict``/``from_dict`` and a schema version. The learning worker writes one per candidate
(``FeedbackStore.register_adapter(..., metrics=record.to_dict())``); the dashboard
(``app.panels``) and ``/status`` (``app.api``) read it back with ``from_dict``, which refuses a
record of an unknown newer version or one that lacks a field. Only the measured numbers are
stored; average accuracy and forgetting are derived from the matrix by ``llaca.learn.metrics``.

Fields (schema version 1):

- ``buffer``, ``session``: the task buffer the candidate learned and the session it came from;
- ``tasks``: the matrix columns: the base probes, then every buffer learned, in order;
- ``matrix``: the online accuracy matrix (percent): one row per version served in turn, the
  candidate's row last; None where a version was not measured on a column;
- ``row_labels``: the version of each row ("base" for the base model), the candidate's name last;
- ``guard``: the guard's report (``llaca.worker.guard.GuardReport``): verdict, reason, both rows;
- ``seconds``: wall time of training plus evaluation;
- ``tune``: the training run's summary (method, steps, samples, losses, EMA statistics...);
- ``group`` (routed versions only, may be absent): the instruction group this version retrained;
  its columns are then "group gN" (each group's held-out items pooled over its buffers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from llaca.learn.metrics import extend_online, online_forgetting, row_average
from llaca.worker.guard import GuardReport

METRICS_SCHEMA_VERSION = 1
TUNE_KEYS = ("method", "steps", "samples", "seconds", "loss_first", "loss_last", "ema", "replay_pool",
             "num_processes", "global_batch", "items", "revision")


class MetricsRecordError(ValueError):
    """Stored adapter metrics that this code cannot read; the message says why."""


@dataclass(frozen=True)
class AdapterMetrics:
    buffer: int
    session: str
    tasks: list[str]
    matrix: list[list[float | None]]
    row_labels: list[str]
    guard: GuardReport
    seconds: float
    tune: dict[str, Any] = field(default_factory=dict)
    schema_version: int = METRICS_SCHEMA_VERSION
    group: str | None = None  # routed versions: the instruction group this version retrained

    @classmethod
    def for_candidate(cls, name: str, served, buffer, guard: GuardReport, probe_names: list[str],
                      run_record: Mapping[str, Any], seconds: float, group: str | None = None) -> "AdapterMetrics":
        """The record of candidate ``name`` trained on ``buffer`` from the ``served`` version
        (an ``AdapterVersion``, or None for the base model): its row is added to the served
        version's matrix (a first matrix starts with the served version's row)."""
        prev = cls.from_dict(served.metrics) if served is not None and served.metrics else None
        tasks, matrix, labels = extend_online(
            prev.tasks if prev else probe_names, prev.matrix if prev else [], prev.row_labels if prev else [],
            f"group {group}" if group else f"buffer {buffer.id}", (served.version if served else "base", guard.current),
            (name, guard.candidate),
        )
        return cls(buffer.id, buffer.session_id, tasks, matrix, labels, guard, round(seconds, 1),
                   {k: run_record.get(k) for k in TUNE_KEYS}, group=group)

    @property
    def average_accuracy(self) -> float | None:
        """Mean accuracy of this candidate's row (the matrix's last row)."""
        return row_average(self.matrix[-1]) if self.matrix else None

    @property
    def forgetting(self) -> dict[str, float]:
        """Points lost on each column since its best earlier row (negative: it improved)."""
        return online_forgetting(self.tasks, self.matrix)

    @property
    def worst_forgetting(self) -> float | None:
        return max(self.forgetting.values(), default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The record with the numbers derived from it: ``average_accuracy``, ``forgetting``."""
        return {**self.to_dict(), "average_accuracy": self.average_accuracy, "forgetting": self.forgetting}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdapterMetrics":
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise MetricsRecordError("adapter metrics have no schema_version: not written by the learning worker")
        if version > METRICS_SCHEMA_VERSION:
            raise MetricsRecordError(
                f"adapter metrics have schema version {version}, newer than this code reads "
                f"({METRICS_SCHEMA_VERSION}); upgrade LLaCA Studio to read them")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data) - {"tune", "group"})
        if missing:
            raise MetricsRecordError(f"adapter metrics lack {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in names}
        return cls(**{**values, "guard": GuardReport(**values["guard"])})
