"""What a process holds in memory: parameter storage counted once per storage, its RSS, and
the peak of a phase (CUDA's allocator peak on a GPU, the kernel's peak RSS on the CPU)."""

from __future__ import annotations

import os

GIB = 1024 ** 3


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


def peak_rss() -> int | None:
    """This process's peak resident set size since the last `reset_peak_rss` (Linux VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Memory:
    """Peak memory of a phase: CUDA's allocator peak on a GPU; on the CPU the process's peak RSS
    (the kernel's VmHWM, reset at the start of the phase; no sampling thread, which would steal
    the CPU from the phase it measures)."""

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss_vmhwm"
        self._reset = False

    def begin(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._reset = reset_peak_rss()

    def end(self) -> dict:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return {"peak_allocated_gib": round(self.torch.cuda.max_memory_allocated(self.device) / GIB, 3),
                    "peak_reserved_gib": round(self.torch.cuda.max_memory_reserved(self.device) / GIB, 3),
                    "allocated_now_gib": round(self.torch.cuda.memory_allocated(self.device) / GIB, 3)}
        peak = peak_rss()
        return {"peak_rss_gib": round(peak / GIB, 3) if peak is not None else None,
                "peak_is_this_phase": self._reset}  # False: the process's peak so far

    def now(self) -> dict:
        if self.cuda:
            return {"allocated_gib": round(self.torch.cuda.memory_allocated(self.device) / GIB, 3)}
        return {"rss_gib": round(rss_bytes() / GIB, 3)}
