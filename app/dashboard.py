"""The learning dashboard: adapter versions, the accuracy matrix, forgetting, the instruction
groups of a version, and rollback.

Visitors see versions and figures. A group's name is a user's question, so the groups table
names groups only for the admin (the admin password, as for rollback and the review queue,
``app.review``); everyone else sees ``HIDDEN_NAME``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gradio as gr
from matplotlib.figure import Figure

from feedback_store import AdapterStatus, AdapterVersion
from llaca.bench.plots import matrix_heatmap
from llaca.worker.record import AdapterMetrics

from .errors import UserError, user_message
from .services import Services
from .teaching import check_admin

log = logging.getLogger(__name__)

BASE_CHOICE = "base (no adapter)"
ADMIN_DISABLED = ("Admin actions are disabled: no admin password is set. Start the app with `LLACA_ADMIN_PASSWORD` "
                  "(or `--admin-password`) to enable review, rollback and forgetting.")
ADMIN_ENABLED = ("Review, rollback and group names need the admin password (`LLACA_ADMIN_PASSWORD`); visitors see "
                 "versions and figures, and their own session in the Chat tab.")
HIDDEN_NAME = "(shown to the admin)"
TABLE_HEADERS = ["version", "status", "parent", "created (UTC)", "avg acc %", "forgetting (worst task)", "guard", "reason"]
DASHBOARD_OUTPUTS = 7  # what `Dashboard.dashboard` returns: summary, versions, matrix, forgetting, 2 pickers, groups
GROUP_HEADERS = ["group", "what it answers", "adapter trained in", "corrections learned / taught", "taught by"]


class Dashboard:
    """Renders the dashboard's views and handles rollback (admin password required)."""

    def __init__(self, services: Services) -> None:
        self.s = services


    def adapters_table(self, adapters: list[AdapterVersion]) -> list[list[Any]]:
        rows = []
        for a in reversed(adapters):
            m = metrics_of(a)
            rows.append([
                a.version, a.status, a.parent_version or "base",
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.created_at)),
                _num(m and m.average_accuracy), _num(m and m.worst_forgetting),
                ("passed" if m.guard.passed else "failed") if m else "", a.reason or (m.guard.reason if m else ""),
            ])
        return rows

    def matrix_figure(self, adapter: AdapterVersion | None) -> Figure | None:
        m = metrics_of(adapter) if adapter else None
        if m is None:
            return None
        fig = Figure(figsize=(5.2, 0.9 + 0.55 * len(m.matrix)), constrained_layout=True)
        ax = fig.add_subplot(1, 1, 1)
        matrix_heatmap(ax, m.matrix, m.tasks, f"accuracy (%) of each version on each task, as of {adapter.version}")
        ax.set_yticks(range(len(m.row_labels)), m.row_labels, fontsize=7)  # rows are the versions served in turn
        return fig

    def forgetting_figure(self, adapters: list[AdapterVersion]) -> Figure | None:
        points = [(a.version, m.worst_forgetting, m.average_accuracy) for a in adapters if (m := metrics_of(a))]
        if not points:
            return None
        fig = Figure(figsize=(4.8, 3.0), constrained_layout=True)
        ax = fig.add_subplot(1, 1, 1)
        xs = list(range(len(points)))
        nan = float("nan")
        ax.plot(xs, [nan if p[1] is None else p[1] for p in points], marker="o", color="#d6604d", label="forgetting (worst task)")
        ax.plot(xs, [nan if p[2] is None else p[2] for p in points], marker="s", color="#4393c3", label="average accuracy")
        ax.set_xticks(xs, [p[0] for p in points], fontsize=8)
        ax.set_ylim(bottom=min(0.0, *(p[1] for p in points if p[1] is not None)) if any(p[1] is not None for p in points) else 0)
        ax.set_ylabel("percent", fontsize=8)
        ax.set_title("forgetting and accuracy per version", fontsize=9)
        ax.legend(fontsize=7)
        return fig

    def groups_table(self, adapter: AdapterVersion | None, adapters: list[AdapterVersion],
                     admin: bool = False) -> list[list[Any]]:
        """The instruction groups of a routed version: each group's adapter (the version that
        trained it), how many of its corrections are learned, and its provenance (the authors
        whose corrections trained it; the admin sees names). Empty for other versions.
        A group's name is a user's question, so only the admin sees it."""
        from llaca.groups.system import RoutedSystem, is_routed_system

        if adapter is None or not is_routed_system(adapter.path):
            return []
        try:
            system = RoutedSystem.load(adapter.path)
        except Exception as e:  # a damaged folder must not break the dashboard
            log.warning("could not read the routed system of %s: %s", adapter.version, e)
            return []
        trained_by = {m.tune.get("revision"): a.version for a in adapters if (m := metrics_of(a)) and m.tune.get("revision")}
        counts = self.s.store.group_counts()
        rows = []
        for g in system.codebook.groups:
            learned, taught = counts.get(g.id, (0, 0))
            adapter_of = trained_by.get(system.trained_in.get(g.id), "?") if g.id in system.adapters else "none (base model)"
            authors = system.authors.get(g.id, [])
            taught_by = ", ".join(authors) if admin else f"{len(authors)} author(s)"
            rows.append([g.id, g.name if admin else HIDDEN_NAME, adapter_of, f"{learned} / {taught}", taught_by])
        return rows

    def is_admin(self, password: str | None) -> bool:
        try:
            check_admin(self.s.settings, password)
            return True
        except UserError:
            return False

    def dashboard(self, chosen: str | None = None, password: str | None = None):
        """Outputs: summary, table, matrix plot, forgetting plot, version picker, rollback picker, groups."""
        adapters = self.s.store.list_adapters()
        current = next((a for a in adapters if a.status == AdapterStatus.CURRENT), None)
        versions = [a.version for a in adapters]
        if chosen not in versions:
            chosen = current.version if current else (versions[-1] if versions else None)
        adapter = next((a for a in adapters if a.version == chosen), None)
        rollback_choices = [BASE_CHOICE] + [a.version for a in adapters if a.status != AdapterStatus.REJECTED]
        summary = (
            f"**{len(adapters)}** adapter version{'s' if len(adapters) != 1 else ''} · current: "
            f"**{current.version if current else 'base'}** · serving now: **{self.s.assistant.version}**"
        )
        if not adapters:
            summary += "\n\nNo adapter has been trained yet: teach a buffer of corrections and the learning worker will train one."
        elif adapter is not None and self.matrix_figure(adapter) is None:
            summary += f"\n\n{adapter.version} has no accuracy matrix recorded."
        return (
            summary, self.adapters_table(adapters), self.matrix_figure(adapter), self.forgetting_figure(adapters),
            gr.update(choices=versions, value=chosen), gr.update(choices=rollback_choices),
            self.groups_table(adapter, adapters, self.is_admin(password)),
        )

    def matrix_for(self, chosen: str | None, password: str | None = None):
        """Outputs: the matrix plot and the groups table of version ``chosen``."""
        adapters = self.s.store.list_adapters()
        adapter = next((a for a in adapters if a.version == chosen), None)
        return self.matrix_figure(adapter), self.groups_table(adapter, adapters, self.is_admin(password))

    def rollback(self, choice: str | None, password: str | None, chosen: str | None = None):
        """Admin: serve an earlier version again (or the base model).
        Outputs: message, then the dashboard's outputs (refreshed on success)."""
        try:
            check_admin(self.s.settings, password)
            if not choice:
                raise UserError("Choose the version to roll back to.")
            target = None if choice == BASE_CHOICE else choice
            self.s.store.rollback_to(target)
        except Exception as e:
            text = user_message(e, "rolling back")
            gr.Warning(text)
            return (f"⚠️ {text}",) + (gr.skip(),) * DASHBOARD_OUTPUTS
        msg = f"Rolled back: {target or 'the base model'} is current and serves from the next answer."
        gr.Info(msg, duration=5)
        log.info("admin rollback to %s", target or "base")
        return (f"✅ {msg}",) + tuple(self.dashboard(chosen, password))


def metrics_of(adapter: AdapterVersion) -> AdapterMetrics | None:
    """The version's metrics record (``llaca.worker.record``); None for a version registered
    without any (not by the learning worker). A malformed record raises."""
    return AdapterMetrics.from_dict(adapter.metrics) if adapter.metrics else None


def _num(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.1f}"
    return ""
