"""The one LLaVA of a process, shared by serving and in-app training, and the adapters resident in it.

One copy of the base weights serves every answer and trains every adapter the in-app worker
makes (`LearningWorker(shared=...)`). The model becomes a peft model the first time an
adapter is needed; from then on:

- **Served adapters** are named peft adapters ("g2@v7": group and the run that trained it),
  loaded on demand from their folders and answered through per-row adapter names
  (`llaca.model.adapter_rows`), never through peft's active adapter. At most `max_adapters` of them
  are resident: a user of one pins it (`pinned`, or `try_pin`/`unpin`), and when a new one
  must be loaded the least recently used unpinned one is deleted (it loads again from disk
  when next asked for). When every resident adapter is pinned, `try_pin` answers False (the
  batcher waits for a row to finish) and `pinned` waits.
- **The adapter being trained** (`begin_training` .. `end_training`) is peft's active adapter,
  the only one with `requires_grad`, and the only module in train mode (its dropout); the
  base model and the served adapters stay in eval mode. It is not counted in the bound.

Turning the bare model into a peft model replaces its linear layers, so that one step takes
the exclusive side of a lock whose shared side every forward holds (`forward()`); adding or
deleting adapters afterwards only touches the layers' adapter dictionaries, which no running
forward of another adapter reads, and runs beside forwards.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llaca.model import adapter_rows
from llaca.model.adapter_rows import BASE_ROW, rows_use
from llaca.model.llava import LoadedModel
from llaca.model.locks import SwapLock

log = logging.getLogger(__name__)

# peft warns each time the active adapter is deleted; here the active adapter means nothing to
# serving (rows name their adapters), so evicting one is routine, not news.
warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted", category=UserWarning)


class AdapterLoadError(RuntimeError):
    """An adapter folder could not be loaded; nothing about what is served changed."""


def adapter_key(path: Path | str) -> str:
    """A peft adapter name for the weights in folder `path` (peft names may not hold dots)."""
    return "a" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


class SharedModel:
    """One `LoadedModel` and the named adapters resident in it (bounded, least recently used out)."""

    def __init__(self, lm: LoadedModel, max_adapters: int = 8) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be at least 1, got {max_adapters}")
        self.lm = lm
        # the LlavaForConditionalGeneration; peft's layers are injected into it in place
        self.base = lm.model.base_model.model if hasattr(lm.model, "peft_config") else lm.model
        self.max_adapters = max_adapters
        if self.is_peft:  # wrapped before: its adapters answer only rows that name them
            adapter_rows.install(lm.model)
        self._wrap = SwapLock()  # forwards: shared; turning the model into a peft model: exclusive
        self._cond = threading.Condition()
        self._resident: OrderedDict[str, Path] = OrderedDict()  # served adapters, least recently used first
        self._pins: dict[str, int] = {}
        self._training: set[str] = set()
        self.loads = 0
        self.evictions = 0
        self.load_seconds: list[float] = []  # the cost of each miss

    # -- the model ---------------------------------------------------------------------

    @property
    def model(self):
        return self.lm.model

    @property
    def is_peft(self) -> bool:
        return hasattr(self.lm.model, "peft_config")

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Hold around a forward pass (or a `generate` call): the model's layers stay as they are."""
        with self._wrap.shared():
            yield

    def _wrap_with(self, make) -> None:
        """Turn the bare model into a peft model with `make(base)` (its first adapter)."""
        with self._wrap.exclusive():
            if not self.is_peft:
                model = make(self.base)
                model.eval()
                adapter_rows.install(model)
                self.lm.model = model

    # -- served adapters ---------------------------------------------------------------

    def resident(self) -> list[str]:
        with self._cond:
            return list(self._resident)

    def try_pin(self, name: str, path: Path | str) -> bool:
        """Pin adapter `name` (loading it from `path` if it is not resident); False when it is
        not resident and every resident adapter is pinned. Raises `AdapterLoadError`."""
        with self._cond:
            if name in self._resident:
                self._resident.move_to_end(name)
                self._pins[name] = self._pins.get(name, 0) + 1
                return True
            while len(self._resident) >= self.max_adapters:
                victim = next((n for n in self._resident if not self._pins.get(n)), None)
                if victim is None:
                    return False
                self._delete(victim)
                self.evictions += 1
            self._load(name, Path(path))
            self._resident[name] = Path(path)
            self._pins[name] = 1
            return True

    def unpin(self, name: str) -> None:
        with self._cond:
            left = self._pins.get(name, 0) - 1
            if left > 0:
                self._pins[name] = left
            else:
                self._pins.pop(name, None)
            self._cond.notify_all()

    @contextmanager
    def pinned(self, name: str | None, path: Path | str | None) -> Iterator[None]:
        """Adapter `name` (None: the base model) resident for the length of the block."""
        if name is None:
            yield
            return
        with self._cond:
            while not self.try_pin(name, path):
                self._cond.wait()
        try:
            yield
        finally:
            self.unpin(name)

    def drop_unused(self, keep: set[str]) -> list[str]:
        """Delete the resident adapters not in `keep` that nobody uses (after a version swap)."""
        with self._cond:
            gone = [n for n in self._resident if n not in keep and not self._pins.get(n)]
            for name in gone:
                self._delete(name)
            return gone

    @contextmanager
    def answering(self, name: str | None, path: Path | str | None) -> Iterator[object]:
        """The model, in this thread answering every row with adapter `name` (None: the base
        model), for a batched `generate` (evaluation)."""
        with self.pinned(name, path), self.forward(), rows_use(name or BASE_ROW):
            yield self.base  # the LLaVA itself: peft's wrapper would apply its active adapter's checks

    def _load(self, name: str, path: Path) -> None:
        if not (path / "adapter_config.json").is_file():
            raise AdapterLoadError(f"adapter {name} at {path} is missing adapter_config.json")
        t0 = time.perf_counter()
        try:
            if not self.is_peft:
                from peft import PeftModel

                self._wrap_with(lambda base: PeftModel.from_pretrained(base, path, adapter_name=name))
            if name not in self.lm.model.peft_config:
                model = self.lm.model
                if model.active_adapter not in model.peft_config:  # no adapter left: peft 0.21 would
                    model.active_adapter = name  # look up the deleted one's config while loading
                model.load_adapter(path, adapter_name=name)
                adapter_rows.install(self.lm.model)
        except Exception as e:  # peft, safetensors or shape errors
            if self.is_peft and name in self.lm.model.peft_config:
                self.lm.model.delete_adapter(name)
            raise AdapterLoadError(f"could not load adapter {name} from {path}: {e}") from e
        self.loads += 1
        self.load_seconds.append(time.perf_counter() - t0)
        log.debug("loaded adapter %s (%d resident)", name, len(self._resident) + 1)

    def _delete(self, name: str) -> None:
        self.lm.model.delete_adapter(name)
        self._resident.pop(name, None)
        self._pins.pop(name, None)

    # -- the adapter being trained -------------------------------------------------------

    def begin_training(self, name: str, lora_config=None, init_adapter: Path | None = None):
        """Add adapter `name` (from `init_adapter`, else new with `lora_config`) as the one to
        train; returns the peft model, with only that adapter trainable and in train mode."""
        from peft import get_peft_model

        with self._cond:
            if init_adapter is None and not self.is_peft:
                self._wrap_with(lambda base: get_peft_model(base, lora_config, adapter_name=name))
            elif init_adapter is None:
                if self.lm.model.active_adapter not in self.lm.model.peft_config:
                    self.lm.model.active_adapter = name
                self.lm.model.add_adapter(name, lora_config)
            elif not self.is_peft:
                from peft import PeftModel

                self._wrap_with(lambda base: PeftModel.from_pretrained(base, init_adapter, adapter_name=name,
                                                                        is_trainable=True))
            else:
                if self.lm.model.active_adapter not in self.lm.model.peft_config:
                    self.lm.model.active_adapter = name
                self.lm.model.load_adapter(init_adapter, adapter_name=name, is_trainable=True)
            model = self.lm.model
            adapter_rows.install(model)
            self._training.add(name)
            model.base_model.set_adapter(name)
            tag = f".{name}."
            for n, p in model.named_parameters():
                p.requires_grad_(tag in n)
            for module in model.modules():
                dropout = getattr(module, "lora_dropout", None)
                if dropout is not None and name in dropout:
                    dropout[name].train()
            return model

    def save_trained(self, name: str, out_dir: Path) -> None:
        """Write adapter `name` as a plain peft folder `out_dir` (adapter_config.json + weights)."""
        out_dir = Path(out_dir)
        tmp = out_dir.parent / f".{out_dir.name}.save"
        shutil.rmtree(tmp, ignore_errors=True)
        self.lm.model.save_pretrained(tmp, selected_adapters=[name])
        saved = tmp / name if (tmp / name).is_dir() else tmp  # peft writes a non-default adapter to a subfolder
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in saved.iterdir():
            if f.is_file():
                shutil.move(str(f), out_dir / f.name)
        shutil.rmtree(tmp, ignore_errors=True)

    def end_training(self, name: str) -> None:
        """Delete the trained adapter; the served ones are untouched."""
        with self._cond:
            self._training.discard(name)
            if self.is_peft and name in self.lm.model.peft_config:
                self.lm.model.delete_adapter(name)
            for p in self.lm.model.parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
