"""Adapter folders on disk: atomic publication and safe discovery.

A version (one peft adapter, or a routed system: `llaca.routed_system`) is written to
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
    from .routed_system import RoutedSystem, is_routed_system

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
