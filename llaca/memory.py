"""What a process holds in memory: parameter storage counted once per storage, and its RSS."""

from __future__ import annotations

import os


def parameter_bytes(*modules) -> int:
    """Bytes of the distinct storages behind the parameters and buffers of `modules`: two
    modules that share weights count them once, two copies count twice."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
