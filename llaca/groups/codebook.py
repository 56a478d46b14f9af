"""Instruction codebook: which group (LoRA adapter) a task or a question belongs to.

Owns the groups of instructions, one group per adapter, and three decisions about them:

* training time — `match(instructions)`: does a buffer's set of questions reuse an existing
  group, or start a new one? `add(instructions, group_id)` stores them; `assign` does both;
* inference — `route(question)`: the group whose adapter answers it, or None for the base
  model (an empty codebook, or a question like no group's, goes to the base model);
* state — `to_json()` / `from_json()`, `save(path)` (atomic) / `load(path)`: plain JSON,
  written beside the adapters. Loading refits the matcher deterministically.

It does not own adapters, training or serving: callers map group ids ("g1", "g2", …, never
reused) to adapter files.

The matchers (how a question's words are compared with a group's) are in
`llaca.groups.instruction_match`, with their measurements.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feedback_store.files import fsync_dir
from llaca.groups.instruction_match import (
    NearestIndex,
    ReleasedIndex,
    instruction_text,
    slot_pattern,
)
from llaca.world.palette import COLOR_NAMES, SHAPES

FORMAT = "llaca-instruction-codebook"
VERSION = 1
MATCHERS: tuple[str, ...] = ("nearest", "released")
SLOT = "_slot_"
DEFAULT_SLOT_WORDS: tuple[str, ...] = COLOR_NAMES + SHAPES
DEFAULT_CACHE_SIZE = 4096
# Per matcher: threshold, margin to the runner-up group, whether slots are masked.
MATCHER_DEFAULTS: dict[str, dict] = {
    "nearest": {"threshold": 0.60, "margin": 0.10, "mask_slots": True},
    "released": {"threshold": 0.30, "margin": 0.0, "mask_slots": False},
}


class CodebookError(ValueError):
    """A codebook state that cannot be used: corrupt JSON, unknown format or version, bad fields."""


@dataclass(frozen=True)
class Group:
    """One group as listed: its id, a display name, how many instructions were added, and how
    many distinct instructions remain after normalisation (and masking, if on)."""

    id: str
    name: str
    count: int
    distinct: int


class _Index:
    """An immutable snapshot of the codebook for scoring, with its own route cache."""

    def __init__(self, ids: list[str], scorer, cache_size: int):
        self.ids = ids
        self.scorer = scorer
        self.cache: dict[str, str | None] = {}
        self.cache_size = cache_size


class InstructionCodebook:
    """Groups of instructions, matched at training time and routed per question at inference.

    `threshold`, `margin` and `mask_slots` default per matcher (`MATCHER_DEFAULTS`). Thread
    safety: `route`/`match`/`scores` may run while another thread calls `add`/`remove`; each
    sees the codebook either before or after the change.
    """

    def __init__(
        self,
        threshold: float | None = None,
        matcher: str = "nearest",
        *,
        margin: float | None = None,
        mask_slots: bool | None = None,
        slot_words: Sequence[str] = DEFAULT_SLOT_WORDS,
        last_line: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        if matcher not in MATCHERS:
            raise ValueError(f"unknown matcher {matcher!r}; choose one of: {', '.join(MATCHERS)}")
        defaults = MATCHER_DEFAULTS[matcher]
        self.matcher = matcher
        self.threshold = float(defaults["threshold"] if threshold is None else threshold)
        self.margin = float(defaults["margin"] if margin is None else margin)
        self.mask_slots = bool(defaults["mask_slots"] if mask_slots is None else mask_slots)
        self.slot_words = tuple(slot_words)
        self.last_line = bool(last_line)
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"threshold and margin must lie in [0, 1], got {self.threshold}, {self.margin}")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.cache_size = int(cache_size)
        self._slots = slot_pattern(self.slot_words) if self.mask_slots else None
        self._groups: dict[str, dict] = {}  # id -> {"name": str, "instructions": {raw: count}}
        self._next_id = 1
        self._lock = threading.RLock()
        self._index = self._build()

    # --- text ---------------------------------------------------------------------------------

    def normalise(self, question: str) -> str:
        """The text the matcher compares (and the route cache's key): the instruction, slots
        masked if on, lower case, whitespace collapsed."""
        text = instruction_text(question, self.last_line)
        if self._slots is not None:
            text = self._slots.sub(SLOT, text)
        return " ".join(text.lower().split())

    # --- listing ------------------------------------------------------------------------------

    @property
    def groups(self) -> list[Group]:
        return [
            Group(gid, g["name"], sum(g["instructions"].values()),
                  len({self.normalise(t) for t in g["instructions"]}))
            for gid, g in self._groups.items()
        ]

    def instructions(self, group_id: str) -> dict[str, int]:
        """A group's stored instructions (as added, not normalised) and how often each was added."""
        return dict(self._group(group_id)["instructions"])

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._groups

    # --- decisions ----------------------------------------------------------------------------

    def scores(self, question: str) -> dict[str, float]:
        """Every group's score for one question (for logs and measurements)."""
        index = self._index
        return dict(zip(index.ids, index.scorer.scores(self.normalise(question)).tolist()))

    def match(self, instructions: Sequence[str]) -> tuple[str | None, float]:
        """Which group a set of instructions (a task's or buffer's questions) belongs to, and the
        best group's score. The group is None, meaning "start a new group", when the codebook is
        empty, the best score is under the threshold, or the runner-up is within the margin."""
        index = self._index
        if not index.ids or not instructions:
            return None, 0.0
        counts: dict[str, int] = {}
        for q in instructions:
            key = self.normalise(q)
            counts[key] = counts.get(key, 0) + 1
        total = np.zeros(len(index.ids))
        for key, c in counts.items():
            total += c * index.scorer.scores(key)
        return self._decide(index, total / len(instructions))

    def route(self, question: str) -> str | None:
        """The group whose adapter should answer `question`; None for the base model."""
        index = self._index
        if not index.ids:
            return None
        key = self.normalise(question)
        cache = index.cache
        if key in cache:
            return cache[key]
        group = self._decide(index, index.scorer.scores(key))[0]
        if len(cache) >= index.cache_size:
            cache.clear()
        cache[key] = group
        return group

    def clear_cache(self) -> None:
        """Forget cached route decisions (they are also dropped whenever a group changes)."""
        self._index.cache.clear()

    def _decide(self, index: _Index, scores: np.ndarray) -> tuple[str | None, float]:
        order = np.argsort(-scores, kind="stable")
        best = float(scores[order[0]])
        runner_up = float(scores[order[1]]) if len(order) > 1 else 0.0
        if best >= self.threshold and best - runner_up >= self.margin:
            return index.ids[order[0]], best
        return None, best

    # --- changes ------------------------------------------------------------------------------

    def add(self, instructions: Sequence[str], group_id: str | None = None, name: str | None = None) -> str:
        """Store instructions in group `group_id`, or in a new group when it is None; returns the
        group's id. `name` names a new group (default: the first instruction's first line) or
        renames an existing one."""
        if isinstance(instructions, str):
            raise TypeError("add() takes a sequence of instructions, not one string")
        if not instructions:
            raise ValueError("add() needs at least one instruction")
        with self._lock:
            if group_id is None:
                group_id = f"g{self._next_id}"
                self._next_id += 1
                first = next((line.strip() for line in instruction_text(instructions[0]).splitlines() if line.strip()), "")
                self._groups[group_id] = {"name": name or first[:60] or group_id, "instructions": {}}
            elif name is not None:
                self._group(group_id)["name"] = name
            stored = self._group(group_id)["instructions"]
            for q in instructions:
                stored[q] = stored.get(q, 0) + 1
            self._index = self._build()
        return group_id

    def assign(self, instructions: Sequence[str], name: str | None = None) -> tuple[str, bool]:
        """`match` then `add`: the group the instructions went to and whether it is new."""
        with self._lock:  # so two buffers cannot both create a group for the same task
            group_id, _ = self.match(instructions)
            return self.add(instructions, group_id, name=None if group_id else name), group_id is None

    def remove(self, group_id: str) -> None:
        """Drop a group (e.g. its adapter was rejected). Its id is not reused."""
        with self._lock:
            self._group(group_id)
            del self._groups[group_id]
            self._index = self._build()

    def _group(self, group_id: str) -> dict:
        try:
            return self._groups[group_id]
        except KeyError:
            raise KeyError(f"no group {group_id!r} in the codebook") from None

    def _build(self) -> _Index:
        ids = list(self._groups)
        group_docs = []
        for gid in ids:
            merged: dict[str, int] = {}
            for raw, c in self._groups[gid]["instructions"].items():
                key = self.normalise(raw)
                merged[key] = merged.get(key, 0) + c
            group_docs.append(list(merged.items()))
        if self.matcher == "released":
            scorer = ReleasedIndex(group_docs)
        else:
            scorer = NearestIndex(group_docs)
        return _Index(ids, scorer, self.cache_size)

    # --- state --------------------------------------------------------------------------------

    def settings(self) -> dict:
        return {
            "name": self.matcher, "threshold": self.threshold, "margin": self.margin,
            "mask_slots": self.mask_slots, "slot_words": list(self.slot_words), "last_line": self.last_line,
        }

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "matcher": self.settings(),
            "next_id": self._next_id,
            "groups": [
                {"id": gid, "name": g["name"], "instructions": [[t, c] for t, c in g["instructions"].items()]}
                for gid, g in self._groups.items()
            ],
        }

    @classmethod
    def from_json(cls, state: object, cache_size: int = DEFAULT_CACHE_SIZE) -> InstructionCodebook:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CodebookError(f"not an instruction codebook (expected format {FORMAT!r})")
        if state.get("version") != VERSION:
            raise CodebookError(f"unsupported codebook version {state.get('version')!r}; this code reads version {VERSION}")
        try:
            m = state["matcher"]
            book = cls(
                threshold=float(m["threshold"]), matcher=m["name"], margin=float(m["margin"]),
                mask_slots=bool(m["mask_slots"]), slot_words=[str(w) for w in m["slot_words"]],
                last_line=bool(m["last_line"]), cache_size=cache_size,
            )
            next_id = state["next_id"]
            groups = {}
            for g in state["groups"]:
                gid, name = g["id"], g["name"]
                instructions = {}
                for text, count in g["instructions"]:
                    if not isinstance(text, str) or type(count) is not int or count < 1:
                        raise CodebookError(f"group {gid!r}: bad instruction entry {[text, count]!r}")
                    instructions[text] = instructions.get(text, 0) + count
                if not isinstance(gid, str) or not isinstance(name, str) or gid in groups or not instructions:
                    raise CodebookError(f"bad or duplicate group {gid!r}")
                groups[gid] = {"name": name, "instructions": instructions}
            used = [int(gid[1:]) for gid in groups if re.fullmatch(r"g\d+", gid)]
            if type(next_id) is not int or next_id <= max(used, default=0):
                raise CodebookError(f"next_id {next_id!r} would reuse a group id")
        except CodebookError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CodebookError(f"malformed codebook: {type(e).__name__}: {e}") from e
        book._groups = groups
        book._next_id = next_id
        book._index = book._build()
        return book

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically: a temporary file beside `path`, fsynced, then renamed."""
        path = Path(path)
        with self._lock:
            text = json.dumps(self.to_json(), indent=1, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike, cache_size: int = DEFAULT_CACHE_SIZE) -> InstructionCodebook:
        """Read a saved codebook; CodebookError if it is not valid JSON of a known version."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CodebookError(f"{path}: not valid JSON: {e}") from e
        try:
            return cls.from_json(state, cache_size=cache_size)
        except CodebookError as e:
            raise CodebookError(f"{path}: {e}") from e
