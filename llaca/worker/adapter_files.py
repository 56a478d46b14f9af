"""Adapter folders on disk: atomic publication and safe discovery.

A version (one peft adapter, or a routed system: `llaca.groups.system`) is written to
`adapters/vN.tmp/`, every file fsynced, then renamed to
`adapters/vN/` and the parent directory fsynced. A reader therefore never sees a
half-written `vN/`; leftovers of a crash are `*.tmp` folders, which are never loaded and
are swept on the worker's start.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from feedback_store.files import fsync_dir

log = logging.getLogger(__name__)

REQUIRED = ("adapter_config.json", "adapter_model.safetensors")


def staging_dir(adapters_dir: Path, version: str) -> Path:
    path = Path(adapters_dir) / f"{version}.tmp"
    if path.exists():
        shutil.rmtree(path)
    return path


def publish(staging: Path, adapters_dir: Path, version: str) -> Path:
    """fsync the staged files, rename `vN.tmp` -> `vN`, fsync the parent. Returns the final path."""
    staging = Path(staging)
    from llaca.groups.system import RoutedSystem, is_routed_system

    if is_routed_system(staging):
        RoutedSystem.load(staging)  # complete: every group's adapter files are there
    else:
        missing = [f for f in REQUIRED if not (staging / f).exists()]
        if missing:
            raise FileNotFoundError(f"adapter {version} is incomplete, missing {missing} in {staging}")
    for folder in [staging, *(d for d in staging.iterdir() if d.is_dir())]:
        for f in folder.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(folder)
    final = Path(adapters_dir) / version
    if final.exists():
        raise FileExistsError(f"adapter folder {final} already exists; versions are never overwritten")
    os.replace(staging, final)
    fsync_dir(Path(adapters_dir))
    return final


def sweep_staging(adapters_dir: Path) -> list[Path]:
    """Remove `*.tmp` folders left by a crash mid-write (they were never published)."""
    removed = []
    for p in Path(adapters_dir).glob("*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log.warning("removed unpublished adapter folder %s (left by an interrupted run)", p)
    return removed


def version_names(next_version: str) -> Iterator[str]:
    """Names for a version to promote: the next number (v1, v2, ...), then the ones after it."""
    number = int(next_version.lstrip("v"))
    return (f"v{number + k}" for k in range(1000))


def publish_first_free(staging: Path, adapters_dir: Path, names: Iterable[str]) -> tuple[str, Path]:
    """Publish under the first of ``names`` that no folder holds yet (another worker may race us:
    a name taken meanwhile is skipped; a folder without a row, left by a crash, is never reused)."""
    for name in names:
        if not (Path(adapters_dir) / name).exists():
            try:
                return name, publish(staging, adapters_dir, name)
            except FileExistsError:
                pass
    raise RuntimeError("could not find a free adapter name")

