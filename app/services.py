"""What every handler needs, created once per process: settings, store, live assistant.

``create_services`` loads the model and opens the feedback store; ``Services`` also owns the
per-session stop events (the Stop button sets the ``threading.Event`` that the model's
stopping criterion checks), the answers in flight (``app.answers``), a small cache of conversation images (decoded once, not per
token), and the examples. Handlers receive it explicitly (no module globals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from PIL import Image

from feedback_store import FeedbackStore
from llaca.config.settings import Settings
from llaca.model.llava import LoadedModel, load_model
from llaca.model.shared import SharedModel
from llaca.serve.assistant import BASE, Assistant, ServedVersion
from llaca.serve.batched_assistant import BatchedAssistant

from .answers import AnswersInFlight
from .examples import Example, make_examples
from .state import SessionState
from .teaching import Teaching, author_name, client_description

log = logging.getLogger(__name__)
T = TypeVar("T")


class StopRequest(threading.Event):
    """The event a generation's stopping criterion checks. ``requested`` tells a user's Stop
    apart from the generator ending for other reasons (it sets the event on exit too)."""

    requested = False


class StopEvents:
    """The stop events of the generations running in each session (keyed by session hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, set[StopRequest]] = {}

    def begin(self, key: str) -> StopRequest:
        event = StopRequest()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        return event

    def end(self, key: str, event: StopRequest) -> None:
        with self._lock:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    def stop(self, key: str | None = None) -> int:
        """Set every running generation's event of this session (of every session when
        ``key`` is None, at shutdown); returns how many."""
        with self._lock:
            events = list(self._events.get(key, ()) if key is not None else
                          (e for evs in self._events.values() for e in evs))
        for e in events:
            e.requested = True
            e.set()
        return len(events)

    def running(self, key: str) -> int:
        with self._lock:
            return len(self._events.get(key, ()))


class ImageCache:
    """Decoded conversation images by sha256 (a small LRU; images are read from the store)."""

    def __init__(self, store: FeedbackStore, size: int = 64) -> None:
        self._store = store
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Image.Image] = OrderedDict()

    def get(self, sha256: str) -> Image.Image:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        with Image.open(self._store.image_path(sha256)) as im:
            image = im.convert("RGB")
        with self._lock:
            self._items[sha256] = image
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return image


STREAM_INTERVAL = 0.05  # seconds between streamed updates (at most 20 a second)


def paced(stream: Iterable[T], interval: float = STREAM_INTERVAL) -> Iterator[T]:
    """Pass on a stream of cumulative updates at most once per ``interval``: the first one
    at once (time to first token is untouched), the last one always, and in between only
    the newest. A fast model then does not pay a network message per token; a slow one
    (slower than ``interval`` per token) still shows every token."""
    last_sent = 0.0
    pending: list[T] = []
    for item in stream:
        now = time.monotonic()
        if now - last_sent >= interval:
            pending.clear()
            last_sent = now
            yield item
        else:
            pending[:] = [item]
    if pending:
        yield pending[0]


def served_version_from(store: FeedbackStore) -> Callable[[], ServedVersion]:
    """What the assistant should serve, according to the store (promotions, rollbacks)."""

    def current() -> ServedVersion:
        adapter = store.current_adapter()
        if adapter is None:
            return ServedVersion(BASE, None)
        return ServedVersion(adapter.version, Path(adapter.path))

    return current


@dataclass
class Services:
    settings: Settings
    store: FeedbackStore
    assistant: Assistant
    examples: list[Example] = field(default_factory=list)
    stops: StopEvents = field(default_factory=StopEvents)
    images: ImageCache | None = None
    worker: object | None = None  # what start_learning_worker returned (see app.py)
    answers: AnswersInFlight | None = None
    teaching: Teaching | None = None

    def __post_init__(self) -> None:
        if self.images is None:
            self.images = ImageCache(self.store)
        if self.answers is None:
            self.answers = AnswersInFlight(self.store)
        if self.teaching is None:
            self.teaching = Teaching(self.settings, self.store)

    @property
    def model_name(self) -> str:
        return self.assistant.lm.name

    def ensure_session(self, state: SessionState, user: str | None = None, client: str | None = None,
                       address: str | None = None) -> str:
        """The store session of this Gradio session, created on first use; ``user`` (a
        signed-in user's name) is its author, else the store names a guest author; guests from
        one ``address`` share their quotas (``Session.quota_key``)."""
        if state.session_id is None:
            state.session_id = self.store.start_session(user=user, client=client, author=user, address=address).id
        return state.session_id

    def admit_question(self, state: SessionState, request=None, profile=None, max_new_tokens: int = 0,
                       image_bytes: int = 0) -> str:
        """The session a new question is recorded in, once its teacher's quotas allow it
        (``app.quotas``; a ``QuotaError`` names the limit). Returns the session id."""
        self.teaching.quotas.check_tokens(max_new_tokens)
        session = self.ensure_session(state, author_name(request, profile), client_description(request),
                                      self.teaching.address(request))
        self.teaching.quotas.check_question(self.store.quota_key_of(session), image_bytes)
        return session

    @contextmanager
    def generation(self, key: str) -> Iterator[StopRequest]:
        """The stop event for one generation of session ``key`` (the session hash): Stop
        sets it, and the model's stopping criterion ends generation at the next token."""
        event = self.stops.begin(key)
        try:
            yield event
        finally:
            self.stops.end(key, event)


def chat_threads(settings: Settings, lm: LoadedModel) -> int | None:
    """Torch threads per answer on CPU: all cores, less the in-app worker's, so that training
    and chat never oversubscribe the cores (which stalls both). None leaves torch's default."""
    if settings.threads:
        return settings.threads
    if lm.device.type != "cpu":
        return None
    import os

    worker = (settings.worker_threads or 1) if settings.worker else 0
    return max(1, (os.cpu_count() or 1) - worker)


def make_assistant(settings: Settings, lm: LoadedModel, current: Callable[[], ServedVersion]) -> Assistant:
    """The live assistant: answers batched on one shared model (``--max-batch`` > 1, the
    default; the in-app worker then trains on that same model), or each answer its own
    ``generate`` (``--max-batch 1``, the path before batching)."""
    threads = chat_threads(settings, lm)
    if settings.max_batch == 1:
        return Assistant(lm, current_version=current, poll_seconds=1.0, threads=threads)
    shared = SharedModel(lm, max_adapters=settings.max_loaded_adapters)
    return BatchedAssistant(shared, current_version=current, poll_seconds=1.0, threads=threads,
                            max_batch=settings.max_batch)


def create_services(settings: Settings, lm: LoadedModel | None = None) -> Services:
    """Load the model (unless given), open the store in the data dir, write the examples.
    The model comes first: if it cannot be loaded, nothing is created on disk."""
    if lm is None:
        lm = load_model(settings.model, device=settings.device, dtype=settings.dtype)
    store = FeedbackStore(settings.data_dir)
    assistant = make_assistant(settings, lm, served_version_from(store))
    try:
        examples = make_examples(settings.data_dir / "examples")
    except Exception:  # examples are a convenience; never block serving
        log.exception("could not prepare the examples")
        examples = []
    return Services(settings=settings, store=store, assistant=assistant, examples=examples)
