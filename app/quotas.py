"""Per-author quotas: what one author may ask, upload and teach, each refusal naming its limit.

The limits are settings (``llaca.config.Settings``): questions per minute, the largest
``max_new_tokens`` an answer may ask for, corrections per hour, buffers waiting to be
learned, corrections waiting for review, and image megabytes per day.

Everything is counted per *teacher* (``Session.quota_key``): a signed-in author, or all the
guests of one network address (behind a Space's proxy, the address the proxy appended to
``X-Forwarded-For``), so that opening new sessions does not reset a guest's counts; guests
on this machine's own loopback address are each their own teacher (the owner's scripts).
Questions are counted here, in memory, in a sliding window. Everything else is counted in the store
(``FeedbackStore.author_usage``), so it holds across restarts and processes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from feedback_store import FeedbackStore
from llaca.config.settings import Settings

from .errors import UserError

WINDOW = 60.0  # seconds: questions per minute


class QuotaError(UserError):
    """A request over one of the author's limits; the message names the limit and its setting."""


class Quotas:
    """Checks one author's request against the limits; raises ``QuotaError`` when over."""

    def __init__(self, settings: Settings, store: FeedbackStore) -> None:
        self.settings, self.store = settings, store
        self._lock = threading.Lock()
        self._asked: dict[str, deque[float]] = defaultdict(deque)

    def check_tokens(self, max_new_tokens: int) -> None:
        cap = self.settings.max_new_tokens
        if max_new_tokens > cap:
            raise QuotaError(f"max_new_tokens {max_new_tokens} is above this app's limit of {cap} "
                             "(LLACA_MAX_NEW_TOKENS).")

    def check_question(self, key: str, image_bytes: int = 0) -> None:
        """Count one question against teacher ``key`` (``Session.quota_key``), then check the
        image budget."""
        limit, now = self.settings.questions_per_minute, time.monotonic()
        who = "from your network address" if key.startswith("address:") else "per author"
        with self._lock:
            q = self._asked[key]
            while q and q[0] <= now - WINDOW:
                q.popleft()
            if len(q) >= limit:
                wait = WINDOW - (now - q[0])
                raise QuotaError(f"Too many questions: the limit is {limit} a minute {who} "
                                 f"(LLACA_QUESTIONS_PER_MINUTE). Try again in {max(1, round(wait))} s.")
            q.append(now)
        if image_bytes:
            budget = int(self.settings.image_mb_per_day * 1e6)
            used = self.store.author_usage(key).image_bytes_last_day
            if used + image_bytes > budget:
                raise QuotaError(f"Image quota reached: {used / 1e6:.1f} of {self.settings.image_mb_per_day:g} MB "
                                 "uploaded in the last 24 hours (LLACA_IMAGE_MB_PER_DAY). Ask about an image already "
                                 "in the chat, or come back later.")

    def check_correction(self, key: str, held: bool) -> None:
        """Before a correction is stored: corrections per hour, and the waiting buffers (or, for
        a correction held for review, the corrections already waiting for review) of teacher
        ``key``."""
        s, usage = self.settings, self.store.author_usage(key)
        who = "from your network address" if key.startswith("address:") else "per author"
        if usage.corrections_last_hour >= s.corrections_per_hour:
            raise QuotaError(f"Correction quota reached: {s.corrections_per_hour} an hour {who} "
                             "(LLACA_CORRECTIONS_PER_HOUR). Your corrections so far are kept.")
        if held and usage.pending_reviews >= s.pending_reviews:
            raise QuotaError(f"{usage.pending_reviews} of your corrections are already waiting for review, the "
                             f"limit (LLACA_PENDING_REVIEWS). New ones are taken once the admin has reviewed them.")
        if not held and usage.waiting_buffers >= s.waiting_buffers:
            raise QuotaError(f"{usage.waiting_buffers} of your buffers are waiting to be learned, the limit "
                             "(LLACA_WAITING_BUFFERS). New corrections are taken once one of them is learned.")
