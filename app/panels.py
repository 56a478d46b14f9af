"""Views of the learning loop: this session's buffer panel and the learning dashboard.

The buffer panel shows what this session has taught (thumbnail, question, corrected answer),
where each buffer is in the pipeline (collecting / queued / training with progress /
promoted as vN / rejected with the reason), the version serving now, and which adapter
version answered each message of the chat. A ``gr.Timer`` polls it; an unchanged panel is
not sent again. The dashboard lists adapter versions with their metrics, plots the
accuracy matrix and forgetting per version, and rolls back (admin password required).
"""

from __future__ import annotations

import base64
import hmac
import html
import io
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import gradio as gr
from matplotlib.figure import Figure
from PIL import Image

from feedback_store import (
    AdapterStatus, AdapterVersion, BufferStatus, TaskBuffer, WorkerActivity, WorkerState, correction_status, plural,
)
from llaca.adapter_metrics import AdapterMetrics
from llaca.group_learning import GROUPS_METHOD
from llaca.liveness import classify
from llaca.plots import matrix_heatmap

from .errors import UserError, user_message
from .services import Services
from .state import SessionState

log = logging.getLogger(__name__)

BASE_CHOICE = "base (no adapter)"
ADMIN_DISABLED = "Admin actions are disabled: no admin password is set. Start the app with `LLACA_ADMIN_PASSWORD` (or `--admin-password`) to enable rollback."
ADMIN_ENABLED = "Rollback needs the admin password (`LLACA_ADMIN_PASSWORD`)."
TABLE_HEADERS = ["version", "status", "parent", "created (UTC)", "avg acc %", "forgetting (worst task)", "guard", "reason"]
DASHBOARD_OUTPUTS = 7  # what `Panels.dashboard` returns: summary, versions, matrix, forgetting, 2 pickers, groups
GROUP_HEADERS = ["group", "what it answers", "adapter trained in", "corrections learned / taught"]


class Thumbnails:
    """Small data-URI thumbnails of stored images, cached by sha256."""

    def __init__(self, services: Services, size: int = 56, keep: int = 512) -> None:
        self.s, self.size, self.keep = services, size, keep
        self._lock = threading.Lock()
        self._items: OrderedDict[str, str] = OrderedDict()

    def get(self, sha256: str | None) -> str:
        if not sha256:
            return ""
        with self._lock:
            if sha256 in self._items:
                return self._items[sha256]
        try:
            with Image.open(self.s.store.image_path(sha256)) as im:
                im = im.convert("RGB")
                im.thumbnail((self.size, self.size))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
            uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        except Exception:
            log.warning("no thumbnail for image %s", sha256, exc_info=True)
            uri = ""
        with self._lock:
            self._items[sha256] = uri
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return uri


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def worker_summary(workers: list[WorkerState], now: float | None = None) -> str:
    """The learning part of the status line: live workers, and for a while the ones that went
    silent without stopping (``llaca.liveness``); workers that stopped cleanly are left out."""
    now = time.time() if now is None else now
    groups = classify(workers, now)
    live, silent = groups.shown(now)
    if not live and not silent:
        if not workers:
            return "no learning worker has reported yet - corrections are kept and will be learned once one runs"
        return "no learning worker is running - corrections are kept and will be learned once one runs"
    several = len(live) + len(silent) > 1
    parts = []
    for w in live:
        name = f"worker {w.worker_id}" if several else "worker"
        d = w.detail or {}
        if w.state == WorkerActivity.TRAINING and d.get("buffer") is not None:
            step, total = d.get("step"), d.get("total")
            where = f" {step}/{total}" if step is not None and total else ""
            parts.append(f"{name} training buffer #{d['buffer']}{where}")
        elif w.state in (WorkerActivity.PROMOTED, WorkerActivity.REJECTED) and d.get("buffer") is not None:
            what = f"promoted {d.get('version')}" if w.state == WorkerActivity.PROMOTED else f"rejected buffer #{d['buffer']}"
            parts.append(f"{name} {what}")
        else:
            parts.append(f"{name} {w.state}")
    for w in silent:
        parts.append(f"worker {w.worker_id} not responding (last seen {int(now - w.updated_at)} s ago)")
    return "; ".join(parts)


def _worker_on(buffer: TaskBuffer, workers: list[WorkerState]) -> WorkerState | None:
    """The worker whose last report is about this buffer (``detail["buffer"]``)."""
    for w in workers:
        if (w.detail or {}).get("buffer") == buffer.id:
            return w
    return None


def _progress(buffer: TaskBuffer, workers: list[WorkerState]) -> float | None:
    """Training progress (0-1) from the worker's ``training`` report: ``step`` of ``total``."""
    w = _worker_on(buffer, workers)
    if w is None or w.state != WorkerActivity.TRAINING or not w.detail.get("total"):
        return None
    return max(0.0, min(1.0, w.detail["step"] / w.detail["total"]))


def learning_rule(threshold: int, method: str = GROUPS_METHOD) -> str:
    """What happens to a buffer, in a user's words (the worker's split and the guard)."""
    from llaca.worker import MIN_ITEMS_TO_HOLD_OUT, WorkerConfig

    share = round(1 / WorkerConfig.heldout_fraction)
    if method == GROUPS_METHOD:
        return (
            f"A buffer is learned when it holds {plural(threshold, 'correction')} or on Teach now. The learning worker "
            f"sorts its corrections by the kind of question (an instruction group) and trains that group's adapter on "
            f"them and on the group's corrections not learned yet, holding out about 1 in {share} (at least "
            f"{WorkerConfig.min_heldout} once there are {MIN_ITEMS_TO_HOLD_OUT} or more) to test it on. The new version "
            f"is served only if it fits what you taught and keeps what the model knew (every group's earlier "
            f"corrections and the base skills); otherwise the reason is shown, and your corrections stay pending and are "
            f"trained again with the group's next buffer."
        )
    return (
        f"A buffer is learned when it holds {plural(threshold, 'correction')} or on Teach now. The learning worker "
        f"trains a new version on it, holding out about 1 in {share} corrections (at least {WorkerConfig.min_heldout} "
        f"once there are {MIN_ITEMS_TO_HOLD_OUT} or more) to test it on. The new version is served only if it answers "
        f"those better and keeps what the model knew; otherwise the buffer is rejected with the reason and the served "
        f"version stays. A smaller buffer has nothing to test on and rarely passes."
    )


def too_small_to_test(size: int) -> bool:
    """Whether a buffer of ``size`` corrections is too small for the worker to hold any out."""
    from llaca.worker import MIN_ITEMS_TO_HOLD_OUT

    return size < MIN_ITEMS_TO_HOLD_OUT


def buffer_status(buffer: TaskBuffer, workers: list[WorkerState], threshold: int) -> tuple[str, str]:
    """(css class, words) for where a buffer is in the learning pipeline."""
    if buffer.status == BufferStatus.OPEN:
        return "open", f"collecting ({buffer.size}/{threshold}; press Teach now to learn sooner)"
    if buffer.status == BufferStatus.READY:
        if not classify(workers).live:
            return "ready", "queued for learning - no learning worker is running, it waits for one"
        return "ready", "queued for learning"
    if buffer.status == BufferStatus.TRAINING:
        w = _worker_on(buffer, workers)
        if w is not None and w.state == WorkerActivity.EVALUATING:
            return "training", "checking it does not forget"
        p = _progress(buffer, workers)
        return "training", "training" + (f" {p:.0%}" if p is not None else "")
    if buffer.status == BufferStatus.PROMOTED:
        return "promoted", f"promoted as {buffer.adapter_version}"
    if buffer.status == BufferStatus.REJECTED:
        reason = (buffer.reason or "no reason given").removeprefix("rejected: ")
        return "rejected", f"rejected: {reason}; the served version stays"
    return buffer.status, buffer.status


def render_buffers(buffers: list[TaskBuffer], workers: list[WorkerState], threshold: int, thumbs: Thumbnails,
                   max_items: int = 12, max_items_done: int = 3, method: str = GROUPS_METHOD) -> str:
    if not buffers:
        return "<div class='llaca-empty'>Nothing taught yet. Correct a wrong answer and it appears here.</div>"
    out = []
    for b in reversed(buffers):
        cls, words = buffer_status(b, workers, threshold)
        bar = ""
        if b.status == BufferStatus.TRAINING:
            p = _progress(b, workers)
            bar = f"<progress max='1' value='{p:.3f}'></progress>" if p is not None else "<progress></progress>"
        rows = []
        shown = max_items if b.status in (BufferStatus.OPEN, BufferStatus.READY) else max_items_done  # learned buffers: a glimpse
        for item in list(reversed(b.items))[:shown]:
            src = thumbs.get(item.image_sha256)
            img = f"<img src='{src}' alt='image' width='40' height='40'>" if src else ""
            fate, fate_words = correction_status(item, b)
            rows.append(f"<tr><td>{img}</td><td>{_e(item.question)}</td><td><b>{_e(item.answer)}</b></td>"
                        f"<td class='llaca-item-{_e(fate.replace(' ', '-'))}'>{_e(fate_words)}</td></tr>")
        more = f"<div class='llaca-more'>… and {b.size - shown} more</div>" if b.size > shown else ""
        out.append(
            f"<div class='llaca-buffer' data-status='{_e(b.status)}'>"
            f"<div class='llaca-buffer-head'><b>Buffer #{b.id}</b> · {plural(b.size, 'correction')} "
            f"<span class='llaca-badge llaca-{_e(cls)}'>{_e(words)}</span></div>{bar}"
            f"<table class='llaca-items'><tr><th></th><th>question</th><th>corrected answer</th><th>what became of it</th></tr>{''.join(rows)}</table>{more}</div>"
        )
    out.append(f"<div class='llaca-empty llaca-rule'>{_e(learning_rule(threshold, method))}</div>")
    return "".join(out)


def render_ledger(state: SessionState) -> str:
    """Which adapter version (and instruction group) answered each answer of this chat, and the
    feedback it got."""
    marks = {"like": "👍", "dislike": "👎", "corrected": "✏️"}
    parts = []
    for i, m in enumerate(state.messages):
        if m.role != "assistant" or m.version is None:
            continue
        mark = marks.get(m.feedback or "", "")
        stop = " ⏹" if m.stopped else ""
        who = f"{m.version} · {m.group}" if m.group else m.version
        parts.append(f"<span class='llaca-chip'>#{state.answer_number(i)} <code>{_e(who)}</code>{mark}{stop}</span>")
    if not parts:
        return ""
    return "<div class='llaca-ledger'>Answered by: " + " ".join(parts) + "</div>"


class Panels:
    """Renders the session panel and the dashboard; handles rollback."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.thumbs = Thumbnails(services)
        self._sent: dict[str, tuple[str, str]] = {}
        self._sent_lock = threading.Lock()

    # -- session panel ------------------------------------------------------------------

    def status_line(self) -> str:
        store_current = self.s.store.current_adapter()
        served = self.s.assistant.version
        wanted = store_current.version if store_current else "base"
        line = f"Model `{self.s.model_name}` · serving **{served}**"
        if wanted != served:
            line += f" (switching to **{wanted}** at the next answer)"
        return line + f" · learning: {worker_summary(self.s.store.worker_states())}"

    def session_panel(self, state: SessionState) -> tuple[str, str]:
        status = self.status_line()
        ledger = render_ledger(state)
        if state.session_id is None:
            body = ledger + render_buffers([], [], self.s.settings.buffer_size, self.thumbs,
                                           method=self.s.settings.learn_method)
        else:
            buffers = self.s.store.session_buffers(state.session_id)
            workers = self.s.store.worker_states()
            body = ledger + render_buffers(buffers, workers, self.s.settings.buffer_size, self.thumbs,
                                           method=self.s.settings.learn_method)
        return status, f"<div class='llaca-session' data-session='{_e(state.session_id or '')}'>{body}</div>"

    def refresh(self, state: SessionState, request: gr.Request = None):
        """Outputs: status line, buffer panel (always sent)."""
        out = self.session_panel(state)
        key = getattr(request, "session_hash", None)
        if key:
            with self._sent_lock:
                self._sent[key] = out
        return out

    def poll(self, state: SessionState, request: gr.Request = None):
        """Timer tick: like ``refresh`` but skips outputs that did not change."""
        try:
            self.s.assistant.refresh()  # load a promoted/rolled-back version while idle
            out = self.session_panel(state)
        except Exception:
            log.warning("status poll failed", exc_info=True)
            return gr.skip(), gr.skip()
        key = getattr(request, "session_hash", None) or ""
        with self._sent_lock:
            last = self._sent.get(key)
            self._sent[key] = out
        if last is None:
            return out
        return tuple(gr.skip() if new == old else new for new, old in zip(out, last))

    def forget(self, request: gr.Request = None) -> None:
        key = getattr(request, "session_hash", None)
        if key:
            with self._sent_lock:
                self._sent.pop(key, None)

    # -- dashboard ---------------------------------------------------------------------

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

    def groups_table(self, adapter: AdapterVersion | None, adapters: list[AdapterVersion]) -> list[list[Any]]:
        """The instruction groups of a routed version: each group's adapter (the version that
        trained it) and how many of its corrections are learned. Empty for other versions."""
        from llaca.routed_system import RoutedSystem, is_routed_system

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
            rows.append([g.id, g.name, adapter_of, f"{learned} / {taught}"])
        return rows

    def dashboard(self, chosen: str | None = None):
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
            self.groups_table(adapter, adapters),
        )

    def matrix_for(self, chosen: str | None):
        """Outputs: the matrix plot and the groups table of version ``chosen``."""
        adapters = self.s.store.list_adapters()
        adapter = next((a for a in adapters if a.version == chosen), None)
        return self.matrix_figure(adapter), self.groups_table(adapter, adapters)

    def rollback(self, choice: str | None, password: str | None, chosen: str | None = None):
        """Admin: serve an earlier version again (or the base model).
        Outputs: message, then the dashboard's outputs (refreshed on success)."""
        try:
            expected = self.s.settings.admin_password
            if not expected:
                raise UserError(ADMIN_DISABLED)
            if not hmac.compare_digest(str(password or "").encode(), expected.encode()):
                raise UserError("Wrong admin password; nothing was changed.")
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
        return (f"✅ {msg}",) + tuple(self.dashboard(chosen))


def metrics_of(adapter: AdapterVersion) -> AdapterMetrics | None:
    """The version's metrics record (``llaca.adapter_metrics``); None for a version registered
    without any (not by the learning worker). A malformed record raises."""
    return AdapterMetrics.from_dict(adapter.metrics) if adapter.metrics else None


def _num(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.1f}"
    return ""
