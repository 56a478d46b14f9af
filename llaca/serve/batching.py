"""Continuous batching: concurrent answers decoded together, each row on its own adapter.

One scheduler thread owns the decoding. Requests join the running batch at step boundaries:
the newcomers are prefilled together (images and prompts, left-padded to the longest), their
first tokens stream at once, and its KV cache is merged into the
batch's (left-padded to a common length, with the attention mask and explicit position ids
saying where each row's tokens are). Every step then decodes one token for every row in a
single forward, each row through its own group adapter or the base model (peft's
mixed-adapter batch, `llaca.model.adapter_rows`). A row leaves when it ends (end of sequence,
its token budget, its stop event, or its reader going away); the padding that no remaining
row needs is cut off, so a row left alone decodes exactly as it would alone.

Per request: temperature 0 is greedy (argmax of the fp32 logits, as `generate` does);
otherwise temperature, top-k (the model's generation config, 50 by default) and top-p are
applied to that row alone with transformers' own logits warpers. Text is streamed per row
through a `TextStreamer`, so it is cut into pieces exactly as `generate`'s streamer cuts it.

Adapters are pinned in the `SharedModel` for as long as a row uses them; when a newcomer's
adapter cannot be loaded because every resident adapter is pinned, it waits for a row to end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TextStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llaca.model.adapter_rows import BASE_ROW, rows_use
from llaca.model.llava import GenerationParams
from llaca.model.shared import AdapterLoadError, SharedModel

log = logging.getLogger(__name__)

_DONE = object()


class GeneratorClosed(RuntimeError):
    """The batcher was closed (the app is shutting down) before this answer could run."""


@dataclass
class Request:
    """One answer to produce: processor inputs of a single conversation (batch of 1)."""

    inputs: dict
    max_new_tokens: int
    params: GenerationParams
    adapter: str | None = None  # peft adapter name (None: the base model)
    adapter_path: Path | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    updates: "queue.SimpleQueue" = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None


class _RowText(TextStreamer):
    """A row's streamer: finalized text accumulates and goes to the request's reader."""

    def __init__(self, tokenizer, request: Request) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.request = request
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text += text
            self.request.updates.put(self.text)


class _Row:
    """A request being decoded: its tokens, position, padding in the batch cache, sampler."""

    def __init__(self, request: Request, tokenizer, generation_config) -> None:
        self.request = request
        self.text = _RowText(tokenizer, request)
        self.generated = 0
        self.length = 0  # real tokens in the cache
        self.pad = 0  # padding columns on the left of this row in the batch cache
        self.last = 0  # the token to feed next
        p = request.params
        self.greedy = p.temperature <= 1e-4
        self.warpers = None if self.greedy else LogitsProcessorList(
            [TemperatureLogitsWarper(p.temperature)]
            + ([TopKLogitsWarper(int(generation_config.top_k))] if getattr(generation_config, "top_k", None) else [])
            + [TopPLogitsWarper(p.top_p)])

    @property
    def name(self) -> str:
        return self.request.adapter or BASE_ROW


class BatchedGenerator:
    """Decodes every running answer in one batch; `stream(request)` yields a row's text so far."""

    def __init__(self, shared: SharedModel, max_batch: int = 8, threads: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.shared = shared
        self.max_batch = max_batch
        self.threads = threads
        lm = shared.lm
        self.tokenizer = lm.processor.tokenizer
        self.gen_config = lm.model.generation_config
        eos = self.gen_config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, cache length]: 1 real, 0 padding
        self._closed = False
        self.steps = 0
        self.row_steps = 0  # sum over steps of the rows decoded
        self._thread = threading.Thread(target=self._loop, name="llava-batch", daemon=True)
        self._thread.start()

    # -- the readers' side -------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        with self._cond:
            if self._closed:
                raise GeneratorClosed("the model is shutting down")
            self._pending.append(request)
            self._cond.notify_all()
        return request

    def stream(self, request: Request) -> Iterator[str]:
        """Submit `request` and yield its answer so far as it grows; closing the iterator (or
        setting the request's stop event) ends the row at the next step."""
        self.submit(request)
        try:
            while True:
                item = request.updates.get()
                newest = item
                while not request.updates.empty():  # a slow reader gets the newest text only
                    item = request.updates.get()
                    if item is _DONE or isinstance(item, BaseException):
                        break
                    newest = item
                if isinstance(item, BaseException):
                    raise item
                if newest is not _DONE and isinstance(newest, str):
                    yield newest
                if item is _DONE:
                    return
        finally:
            request.stop.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for r in pending:
            r.updates.put(GeneratorClosed("the model is shutting down"))

    @property
    def running(self) -> int:
        return len(self._rows)

    # -- the scheduler -----------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._rows:
                    self._cond.wait()
                if self._closed and not self._rows:
                    return
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._rows:
                        self._step()
            except Exception as e:  # a failed forward fails the rows it held, not the server
                log.exception("batched generation failed; %d answers end with the error", len(self._rows))
                for row in self._rows:
                    self._finish(row, e)
                self._rows, self._cache, self._mask = [], None, None

    def _admit(self) -> list[Request]:
        """Take waiting requests while the batch has room and their adapters can be resident."""
        admitted: list[Request] = []
        while self._pending and len(self._rows) + len(admitted) < self.max_batch:
            request = self._pending[0]
            if request.stop.is_set():
                self._pending.popleft()
                request.updates.put(_DONE)
                continue
            if request.adapter is not None:
                try:
                    if not self.shared.try_pin(request.adapter, request.adapter_path):
                        break  # every resident adapter is in use: wait for a row to end
                except AdapterLoadError as e:
                    self._pending.popleft()
                    request.updates.put(e)
                    continue
            admitted.append(self._pending.popleft())
        return admitted

    def _prefill(self, requests: list[Request]) -> None:
        """One forward over the newcomers' prompts (left-padded to the longest), their first
        tokens, and their caches merged into the batch."""
        rows = [_Row(r, self.tokenizer, self.gen_config) for r in requests]
        lengths = [int(r.inputs["input_ids"].shape[1]) for r in requests]
        width = max(lengths)
        device = requests[0].inputs["input_ids"].device
        pad_id = self.gen_config.pad_token_id if self.gen_config.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, (r, n) in enumerate(zip(requests, lengths)):
            input_ids[i, width - n:] = r.inputs["input_ids"][0]
            mask[i, width - n:] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers a left-padded prompt
        padded = min(lengths) != width
        try:
            with self.shared.forward(), rows_use([row.name for row in rows]):
                out = self.shared.base(input_ids=input_ids, attention_mask=mask if padded else None,
                                       pixel_values=torch.cat([r.inputs["pixel_values"] for r in requests]),
                                       position_ids=position_ids, use_cache=True, logits_to_keep=1)
            tokens = self._sample(rows, out.logits[:, -1, :])
        except Exception as e:  # these newcomers fail; the running rows go on
            log.exception("prefill failed; %d answers end with the error", len(rows))
            for row in rows:
                self._finish(row, e)
            return
        now = time.perf_counter()
        for row, n in zip(rows, lengths):
            row.length, row.pad = n, width - n
            row.request.first_token = now
        self._merge(rows, out.past_key_values, mask)
        self._advance(rows, tokens)

    def _step(self) -> None:
        rows = self._rows
        device = self.shared.lm.device
        input_ids = torch.tensor([[row.last] for row in rows], device=device)
        position_ids = torch.tensor([[row.length] for row in rows], device=device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        padded = any(row.pad for row in rows)
        with self.shared.forward(), rows_use([row.name for row in rows]):
            out = self.shared.base(input_ids=input_ids, attention_mask=mask if padded else None,
                                    position_ids=position_ids, past_key_values=self._cache, use_cache=True,
                                    logits_to_keep=1)
        self._cache, self._mask = out.past_key_values, mask
        for row in rows:
            row.length += 1
        self.steps += 1
        self.row_steps += len(rows)
        self._advance(rows, self._sample(rows, out.logits[:, -1, :]))

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        scores = logits.float()
        tokens = torch.argmax(scores, dim=-1)
        for i, row in enumerate(rows):
            if not row.greedy:
                warped = row.warpers(None, scores[i : i + 1])
                tokens[i] = torch.multinomial(torch.softmax(warped, dim=-1), 1)[0, 0]
        return tokens.tolist()  # the step's one host sync: the tokens stream out now

    def _advance(self, rows: list[_Row], tokens: list[int]) -> None:
        """Stream each row's new token; drop the rows that ended."""
        ended = []
        for row, token in zip(rows, tokens):
            row.generated += 1
            if token in self.eos:
                ended.append(row)
                continue
            row.last = token
            row.text.put(torch.tensor([token]))
            if row.generated >= row.request.max_new_tokens or row.request.stop.is_set():
                ended.append(row)
        for row in ended:
            self._finish(row)
        if ended:
            keep = [i for i, row in enumerate(self._rows) if row not in ended]
            self._select(keep)

    def _finish(self, row: _Row, error: BaseException | None = None) -> None:
        if error is None:
            row.text.end()
        if row.request.adapter is not None:
            self.shared.unpin(row.request.adapter)
        row.request.updates.put(error if error is not None else _DONE)

    # -- the batch's KV cache ------------------------------------------------------------

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Append prefilled `rows` (their cache and [rows, columns] mask) to the batch."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)
        for row in self._rows:
            row.pad += width - old
        for row in rows:
            row.pad += width - new
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self._rows += rows

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep` and cut the padding columns none of them needs."""
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        self._rows = [self._rows[i] for i in keep]
        cut = min(row.pad for row in self._rows)
        index = torch.tensor(keep, device=self._mask.device)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:]
            layer.values = layer.values.index_select(0, index)[:, :, cut:]
        self._mask = self._mask.index_select(0, index)[:, cut:]
        for row in self._rows:
            row.pad -= cut


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """`t` with zeros prepended along `dim` up to `width` (KV caches: [batch, heads, length, dim])."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
