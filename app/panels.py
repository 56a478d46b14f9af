"""This session's view of the learning loop: the buffer panel, the status line and the ledger.

The buffer panel shows what this session has taught (thumbnail, question, corrected answer,
and the corrections held for review),
where each buffer is in the pipeline (collecting / queued / training with progress /
promoted as vN / rejected with the reason), the version serving now, and which adapter
version answered each message of the chat. A ``gr.Timer`` polls it; an unchanged panel is
not sent again. The learning dashboard is ``app.dashboard``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import gradio as gr
from PIL import Image

from feedback_store import (
    BufferStatus,
    TaskBuffer,
    WorkerActivity,
    WorkerState,
    correction_status,
    plural,
)
from llaca.worker.liveness import classify

from .services import Services
from .state import SessionState

log = logging.getLogger(__name__)



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
    silent without stopping (``llaca.worker.liveness``); workers that stopped cleanly are left out."""
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


def learning_rule(threshold: int) -> str:
    """What happens to a buffer, in a user's words (the worker's split and the guard)."""
    from llaca.worker.guard import MIN_HELDOUT, MIN_ITEMS_TO_HOLD_OUT
    from llaca.worker.loop import WorkerConfig

    share = round(1 / WorkerConfig.heldout_fraction)
    return (
        f"A buffer is learned when it holds {plural(threshold, 'correction')} or on Teach now. The learning worker "
        f"sorts its corrections by the kind of question (an instruction group) and trains that group's adapter on "
        f"them and on the group's corrections not learned yet, holding out about 1 in {share} (at least "
        f"{MIN_HELDOUT} once there are {MIN_ITEMS_TO_HOLD_OUT} or more) to test it on. The new version "
        f"is served only if it fits what you taught and keeps what the model knew (every group's earlier "
        f"corrections and the base skills); otherwise the reason is shown, and your corrections stay pending and are "
        f"trained again with the group's next buffer."
    )


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
                   max_items: int = 12, max_items_done: int = 3) -> str:
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
    out.append(f"<div class='llaca-empty llaca-rule'>{_e(learning_rule(threshold))}</div>")
    return "".join(out)


def render_reviews(reviews: list, thumbs: Thumbnails, max_items: int = 12) -> str:
    """This session's corrections held for review: waiting, approved (then in a buffer above),
    or rejected with the admin's reason."""
    if not reviews:
        return ""
    words = {"pending": "waiting for review", "approved": "approved: in a buffer above",
             "rejected": "rejected: not learned"}
    rows = []
    for r in list(reversed(reviews))[:max_items]:
        src = thumbs.get(r.image_sha256)
        img = f"<img src='{src}' alt='image' width='40' height='40'>" if src else ""
        why = f" ({_e(r.reason)})" if r.status == "rejected" and r.reason else ""
        rows.append(f"<tr><td>{img}</td><td>{_e(r.question)}</td><td><b>{_e(r.correction)}</b></td>"
                    f"<td class='llaca-review-{_e(r.status)}'>{_e(words.get(r.status, r.status))}{why}</td></tr>")
    pending = sum(r.status == "pending" for r in reviews)
    return (f"<div class='llaca-buffer' data-status='review'><div class='llaca-buffer-head'><b>Held for review</b> · "
            f"{plural(pending, 'correction')} waiting <span class='llaca-badge llaca-ready'>the admin approves what "
            f"is learned here</span></div><table class='llaca-items'><tr><th></th><th>question</th>"
            f"<th>your correction</th><th>status</th></tr>{''.join(rows)}</table></div>")


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
    """Renders the status line and this session's panel."""

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
            body = ledger + render_buffers([], [], self.s.settings.buffer_size, self.thumbs)
        else:
            buffers = self.s.store.session_buffers(state.session_id)
            workers = self.s.store.worker_states()
            reviews = self.s.store.session_reviews(state.session_id)
            body = ledger + render_reviews(reviews, self.thumbs) + render_buffers(
                buffers, workers, self.s.settings.buffer_size, self.thumbs)
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
