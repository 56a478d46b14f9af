"""A routed system on disk: one served version that holds an adapter per instruction group.

With instruction groups (`llaca+groups`), a promoted version `vN` is the whole routed system
the assistant serves, so versions, rollback and crash safety work exactly as for a single
adapter (one folder, published atomically, one `current` row):

    adapters/vN/
      system.json      {"format": "llaca-routed-system", "version": 1,
                        "groups": {"g1": {"trained_in": "v3", "authors": ["ada", "guest-1a2b3c4d"]}, ...}}
      codebook.json    the instruction codebook (`llaca.groups.codebook`) that routes questions
      g1/, g2/, ...    one plain peft LoRA folder per group that has an adapter

Each group records its provenance: the authors whose corrections trained its adapter (over
every run it continued from), so forgetting an author knows which groups to retrain. A group
trained in an earlier version is hard-linked from that version's folder (the files
are immutable once published), so a new version costs one adapter's bytes. The codebook may
hold groups without an adapter (taught but never promoted): their questions go to the base
model, as do questions that route to no group.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llaca.groups.codebook import InstructionCodebook

FORMAT = "llaca-routed-system"
VERSION = 1
SYSTEM_FILE = "system.json"
CODEBOOK_FILE = "codebook.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class SystemFormatError(ValueError):
    """A folder that claims to be a routed system is not a complete one."""


def is_routed_system(path: Path | str | None) -> bool:
    return path is not None and (Path(path) / SYSTEM_FILE).is_file()


@dataclass
class RoutedSystem:
    """The codebook and {group id: (adapter folder, version that trained it)} of one version."""

    codebook: InstructionCodebook
    adapters: dict[str, Path] = field(default_factory=dict)
    trained_in: dict[str, str] = field(default_factory=dict)
    authors: dict[str, list[str]] = field(default_factory=dict)  # group -> authors whose corrections trained it

    def adapter_name(self, group: str) -> str:
        """A peft adapter name unique to this group's weights: "g2@v7"."""
        return f"{group}@{self.trained_in[group]}"

    def route(self, question: str) -> str | None:
        """The group whose adapter answers `question`, or None for the base model."""
        group = self.codebook.route(question)
        return group if group in self.adapters else None

    def replaced(self, group: str, adapter: Path, trained_in: str, codebook: InstructionCodebook,
                 authors: list[str] | None = None) -> "RoutedSystem":
        """This system with `group`'s adapter replaced (or added), routed by `codebook`, trained
        by `authors` (None: the group's authors so far)."""
        return RoutedSystem(codebook, {**self.adapters, group: Path(adapter)}, {**self.trained_in, group: trained_in},
                            {**self.authors, group: sorted(set(self.authors.get(group, []) if authors is None else authors))})

    def without(self, groups) -> "RoutedSystem":
        """This system with `groups` dropped: their questions go to the base model."""
        drop = set(groups)
        keep = lambda d: {g: v for g, v in d.items() if g not in drop}  # noqa: E731
        return RoutedSystem(self.codebook, keep(self.adapters), keep(self.trained_in), keep(self.authors))

    def groups_of(self, author: str) -> list[str]:
        """The groups whose adapter `author`'s corrections trained."""
        return sorted(g for g, names in self.authors.items() if author in names and g in self.adapters)

    @classmethod
    def empty(cls, codebook: InstructionCodebook | None = None) -> "RoutedSystem":
        return cls(codebook or InstructionCodebook())

    @classmethod
    def load(cls, path: Path | str) -> "RoutedSystem":
        path = Path(path)
        try:
            meta = json.loads((path / SYSTEM_FILE).read_text())
        except (OSError, ValueError) as e:
            raise SystemFormatError(f"{path} has no readable {SYSTEM_FILE}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise SystemFormatError(f"{path / SYSTEM_FILE} is not a {FORMAT} version {VERSION} file")
        codebook = InstructionCodebook.load(path / CODEBOOK_FILE)
        adapters, trained_in, authors = {}, {}, {}
        for group, info in meta.get("groups", {}).items():
            folder = path / group
            missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
            if missing:
                raise SystemFormatError(f"group {group}'s adapter in {path} lacks {', '.join(missing)}")
            adapters[group], trained_in[group] = folder, str(info["trained_in"])
            authors[group] = [str(a) for a in info.get("authors", [])]
        return cls(codebook, adapters, trained_in, authors)

    def write(self, out: Path | str) -> Path:
        """Write this system into the (staging) folder `out`; unchanged adapters are hard-linked."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for group, src in self.adapters.items():
            dst = out / group
            if Path(src).resolve() == dst.resolve():
                continue
            dst.mkdir(exist_ok=True)
            for f in ADAPTER_FILES:
                target = dst / f
                target.unlink(missing_ok=True)
                try:
                    os.link(Path(src) / f, target)
                except OSError:  # another filesystem: copy
                    shutil.copy2(Path(src) / f, target)
        self.codebook.save(out / CODEBOOK_FILE)
        meta = {"format": FORMAT, "version": VERSION,
                "groups": {g: {"trained_in": self.trained_in[g], "authors": self.authors.get(g, [])}
                           for g in sorted(self.adapters)}}
        (out / SYSTEM_FILE).write_text(json.dumps(meta, indent=1))
        return out
