"""The live assistant: one loaded LLaVA, the adapter version it serves, and safe hot swaps.

This is the path that answers each question with its own `generate` (`--max-batch 1`); the
default, `llaca.serve.batched_assistant.BatchedAssistant`, keeps this class's versions, polling and
swap lock and answers every conversation in one continuous batch instead.

Generations hold a shared lock; a swap (promotion or rollback) takes it exclusively, so a
generation in flight finishes on the old weights and the next one starts on the new ones,
and no request fails. Swaps are writer-preferring: once a swap is waiting, new generations
queue behind it, so promotions are never starved by a busy chat.

Which version should be served is not decided here: the app passes a `current_version`
callable (backed by the feedback store) and the assistant polls it between generations.
Adapters are loaded with peft (`load_adapter` + `set_adapter`, the old one deleted); the
base model is served with the adapter layers disabled. A routed version
(`llaca.groups.system`: one adapter per instruction group and the codebook) keeps every
group's adapter loaded as a named peft adapter; each question is routed to its group's
adapter, or to the base model, and `AdapterGate` (`llaca.model.locks`) makes generations that
need different adapters take turns, so concurrent chats on different groups never see each
other's adapter.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from PIL import Image

from llaca.groups.system import RoutedSystem, is_routed_system
from llaca.model.llava import GenerationParams, LoadedModel, stream_answer
from llaca.model.locks import AdapterGate, SwapLock
from llaca.model.shared import AdapterLoadError

log = logging.getLogger(__name__)

BASE = "base"


@dataclass(frozen=True)
class ServedBy:
    """Who answered: the served version ("base" or "vN") and, when that version is a routed
    system, the instruction group whose adapter answered (None: the base model did)."""

    version: str
    group: str | None = None


@dataclass(frozen=True)
class ServedVersion:
    version: str  # "base" or "vN"
    path: Path | None


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
        self._gate = AdapterGate()
        self._system: RoutedSystem | None = None
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
        if target.version == BASE or target.path is None:
            self._load_named({})
            self._system = None
        else:
            path = Path(target.path)
            try:
                if is_routed_system(path):
                    system = RoutedSystem.load(path)
                    self._load_named({system.adapter_name(g): p for g, p in system.adapters.items()})
                    self._system = system
                else:
                    if not (path / "adapter_config.json").exists():
                        raise AdapterLoadError(f"adapter {target.version} at {path} is missing adapter_config.json")
                    self._load_named({target.version: path})
                    self._system = None
            except AdapterLoadError:
                raise
            except Exception as e:  # SystemFormatError, peft or safetensors errors
                raise AdapterLoadError(f"could not load adapter {target.version} from {path}: {e}") from e
        self._gate.reset()
        self._served = target if target.path is not None else ServedVersion(BASE, None)
        self.swaps += 1

    def _load_named(self, wanted: dict[str, Path]) -> None:
        """Make exactly the adapters `wanted` ({peft name: folder}) loaded; none: the base model.
        An adapter already loaded under its name (a routed group unchanged since the last
        version) is kept, not read again."""
        model = self.lm.model
        if not wanted:
            if hasattr(model, "peft_config"):
                model.base_model.disable_adapter_layers()
            return
        if not hasattr(model, "peft_config"):
            from peft import PeftModel

            name, path = next(iter(wanted.items()))
            model = PeftModel.from_pretrained(self._base_model, path, adapter_name=name)
            model.eval()
            self.lm.model = model
        for name, path in wanted.items():
            if name not in model.peft_config:
                model.load_adapter(path, adapter_name=name)
        model.base_model.enable_adapter_layers()
        model.set_adapter(next(iter(wanted)))
        for name in [n for n in model.peft_config if n not in wanted]:
            model.delete_adapter(name)
        model.to(self.lm.device)

    def _activate(self, mode: str) -> None:
        """Make adapter `mode` the active one (BASE: adapters off). Called by the gate, idle."""
        model = self.lm.model
        if not hasattr(model, "peft_config"):
            return
        if mode == BASE:
            model.base_model.disable_adapter_layers()
        else:
            model.base_model.enable_adapter_layers()
            model.set_adapter(mode)

    def served_by(self, question: str) -> ServedBy:
        """Which version (and, for a routed version, which group) would answer `question` now."""
        system = self._system
        group = system.route(question) if system is not None else None
        return ServedBy(self.version, group)

    def stream(
        self,
        turns: Sequence[tuple[str, str | None]],
        image: Image.Image,
        params: GenerationParams = GenerationParams(),
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[str, ServedBy]]:
        """Yield (answer so far, who answers). Who answers is fixed for the whole answer: the
        served version, and for a routed version the group the last question routes to."""
        self.refresh()
        with self._lock.shared():
            served = self.served_by(turns[-1][0] if turns else "")
            if self._system is not None:
                mode = self._system.adapter_name(served.group) if served.group else BASE
            else:
                mode = served.version
            with self._gate.use(mode, self._activate):
                for text in stream_answer(self.lm, turns, image, params, stop, threads=self.threads):
                    yield text, served
