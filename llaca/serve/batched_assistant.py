"""The live assistant on one shared model: answers batched across users and groups.

`BatchedAssistant` keeps `Assistant`'s contract (`stream`, `served_by`, `refresh`, hot swaps
polled from the store) and answers through `llaca.serve.batching.BatchedGenerator`: every answer
in flight is a row of one batch, on its group's adapter or the base model. A swap only
replaces the routing table: no weights are loaded then; each adapter is loaded into the
`SharedModel` when a question first needs it, and the previous version's adapters are deleted
as soon as no answer uses them. An answer in flight ends on the adapter it started with (its
row keeps the adapter pinned); the next answer is routed by the new version.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from PIL import Image

from llaca.groups.system import RoutedSystem, is_routed_system
from llaca.model.llava import GenerationParams, build_inputs
from llaca.model.shared import AdapterLoadError, SharedModel, adapter_key
from llaca.serve.assistant import BASE, Assistant, ServedBy, ServedVersion
from llaca.serve.batching import BatchedGenerator, Request


class BatchedAssistant(Assistant):
    """Answers every conversation in one continuous batch on the shared model."""

    def __init__(
        self,
        shared: SharedModel,
        current_version: Callable[[], ServedVersion] | None = None,
        poll_seconds: float = 1.0,
        threads: int | None = None,
        max_batch: int = 8,
    ) -> None:
        self.shared = shared
        self._single: tuple[str, Path] | None = None  # a version that is one plain adapter
        self.batcher = BatchedGenerator(shared, max_batch=max_batch, threads=threads)
        super().__init__(shared.lm, current_version, poll_seconds, threads)

    def _swap_locked(self, target: ServedVersion) -> None:
        if target.version == self._served.version:
            return
        system, single = None, None
        if target.version != BASE and target.path is not None:
            path = Path(target.path)
            if is_routed_system(path):
                try:
                    system = RoutedSystem.load(path)
                except Exception as e:  # SystemFormatError, a bad codebook
                    raise AdapterLoadError(f"could not load {target.version} from {path}: {e}") from e
            elif (path / "adapter_config.json").is_file():
                single = (adapter_key(path), path)
            else:
                raise AdapterLoadError(f"adapter {target.version} at {path} is missing adapter_config.json")
        self._system, self._single = system, single
        self._served = target if target.path is not None else ServedVersion(BASE, None)
        self.swaps += 1
        self.shared.drop_unused(set(self._adapters()))

    def _adapters(self) -> dict[str, Path]:
        """{peft name: folder} of every adapter the served version may answer with."""
        if self._system is not None:
            return {self._system.adapter_name(g): p for g, p in self._system.adapters.items()}
        return dict([self._single]) if self._single else {}

    def _adapter_for(self, served: ServedBy) -> tuple[str | None, Path | None]:
        if self._system is not None:
            if served.group is None:
                return None, None
            return self._system.adapter_name(served.group), self._system.adapters[served.group]
        return self._single if self._single else (None, None)

    def stream(
        self,
        turns: Sequence[tuple[str, str | None]],
        image: Image.Image,
        params: GenerationParams = GenerationParams(),
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[str, ServedBy]]:
        """Yield (answer so far, who answers), as `Assistant.stream` does."""
        self.refresh()
        with self._lock.shared():
            served = self.served_by(turns[-1][0] if turns else "")
            adapter, path = self._adapter_for(served)
        inputs, max_new = build_inputs(self.lm, turns, image, params.max_new_tokens)
        request = Request(dict(inputs), max_new, params, adapter, path, stop=stop or threading.Event())
        for text in self.batcher.stream(request):
            yield text, served

    def close(self) -> None:
        self.batcher.close()
