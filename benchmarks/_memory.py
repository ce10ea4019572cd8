"""Peak memory of one workload in the current (fresh) process, shared by the benchmarks.

Resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) after set-up and reads
``VmHWM`` when the workload is done: the figure is that peak minus the resident size before. It
counts everything the allocator holds, not only live tensors. Without ``clear_refs``, ``ru_maxrss``.
"""
from __future__ import annotations

import gc
import resource
from pathlib import Path


def status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_extra_memory(workload) -> dict:
    """Run ``workload()`` once and return its peak resident memory above the starting point (MiB)."""
    gc.collect()
    before = status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after resetting it with /proc/self/clear_refs, minus VmRSS before the workload"
    except OSError:
        method = "ru_maxrss (peak of the whole process, incl. loading), minus VmRSS before the workload"
    workload()
    peak = status_kb("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_before_mib": before / 1024 if before else None, "peak_rss_mib": peak / 1024,
            "peak_extra_mib": (peak - before) / 1024 if before else None, "method": method}
