"""The live assistant: one loaded LLaVA, the adapter version it serves, and safe hot swaps.

Generations hold a shared lock; a swap (promotion or rollback) takes it exclusively, so a
generation in flight finishes on the old weights and the next one starts on the new ones,
and no request fails. Swaps are writer-preferring: once a swap is waiting, new generations
queue behind it, so promotions are never starved by a busy chat.

Which version should be served is not decided here: the app passes a `current_version`
callable (backed by the feedback store) and the assistant polls it between generations.
Adapters are loaded with peft (`load_adapter` + `set_adapter`, the old one deleted); the
base model is served with the adapter layers disabled.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from PIL import Image

from .model import GenerationParams, LoadedModel, stream_answer

log = logging.getLogger(__name__)

BASE = "base"


class AdapterLoadError(RuntimeError):
    """An adapter folder could not be loaded; the served version is unchanged."""


@dataclass(frozen=True)
class ServedVersion:
    version: str  # "base" or "vN"
    path: Path | None


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


class Assistant:
    """Answers conversations with the currently promoted adapter, swapping it between generations."""

    def __init__(
        self,
        lm: LoadedModel,
        current_version: Callable[[], ServedVersion] | None = None,
        poll_seconds: float = 1.0,
        threads: int | None = None,
    ) -> None:
        self.lm = lm
        self.threads = threads  # torch CPU threads per generation (None: the process default)
        self._base_model = lm.model
        self._current_version = current_version
        self._poll_seconds = poll_seconds
        self._last_poll = 0.0
        self._lock = SwapLock()
        self._served = ServedVersion(BASE, None)
        self.swaps = 0
        self.refresh(force=True)

    @property
    def version(self) -> str:
        return self._served.version

    @property
    def model(self):
        return self.lm.model

    def refresh(self, force: bool = False) -> str:
        """Swap to the version the store says is current, if it changed. Cheap when nothing did."""
        if self._current_version is None:
            return self.version
        now = time.monotonic()
        if not force and now - self._last_poll < self._poll_seconds:
            return self.version
        self._last_poll = now
        try:
            wanted = self._current_version()
        except Exception:  # the store being briefly unavailable must not break chat
            log.exception("could not read the current adapter version; keeping %s", self.version)
            return self.version
        if wanted.version != self._served.version:
            try:
                self.swap_to(wanted)
            except AdapterLoadError:
                log.exception("keeping %s", self.version)
        return self.version

    def swap_to(self, target: ServedVersion) -> None:
        """Serve `target` from the next generation on; waits for generations in flight."""
        with self._lock.exclusive():
            self._swap_locked(target)
        log.info("now serving %s", target.version)

    def _swap_locked(self, target: ServedVersion) -> None:
        if target.version == self._served.version:
            return
        model = self.lm.model
        if target.version == BASE or target.path is None:
            if hasattr(model, "peft_config"):
                model.base_model.disable_adapter_layers()
            self._served = ServedVersion(BASE, None)
            self.swaps += 1
            return
        path = Path(target.path)
        if not (path / "adapter_config.json").exists():
            raise AdapterLoadError(f"adapter {target.version} at {path} is missing adapter_config.json")
        try:
            if not hasattr(model, "peft_config"):
                from peft import PeftModel

                model = PeftModel.from_pretrained(self._base_model, path, adapter_name=target.version)
                model.eval()
                self.lm.model = model
            else:
                old = [n for n in model.peft_config if n != target.version]
                if target.version not in model.peft_config:
                    model.load_adapter(path, adapter_name=target.version)
                model.base_model.enable_adapter_layers()
                model.set_adapter(target.version)
                for name in old:
                    model.delete_adapter(name)
            model.to(self.lm.device)
        except Exception as e:
            raise AdapterLoadError(f"could not load adapter {target.version} from {path}: {e}") from e
        self._served = target
        self.swaps += 1

    def stream(
        self,
        turns: Sequence[tuple[str, str | None]],
        image: Image.Image,
        params: GenerationParams = GenerationParams(),
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Yield (answer so far, version answering). The version is fixed for the whole answer."""
        self.refresh()
        with self._lock.shared():
            version = self.version
            for text in stream_answer(self.lm, turns, image, params, stop, threads=self.threads):
                yield text, version
