"""Peak memory of one workload in the current (fresh) process, shared by the benchmarks.

Resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) after set-up and reads
``VmHWM`` when the workload is done: the figure is that peak minus the resident size before. It
counts everything the allocator holds, not only live tensors. Without ``clear_refs``, ``ru_maxrss``.
"""

from __future__ import annotations

import gc
import resource
from pathlib import Path

from inflora.training.memory_measure import status_kb  # the one /proc/self/status reader


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
    return {
        "rss_before_mib": before / 1024 if before else None,
        "peak_rss_mib": peak / 1024,
        "peak_extra_mib": (peak - before) / 1024 if before else None,
        "method": method,
    }


def run_memory_child(cmd: list[str], name: str) -> dict:
    """Run ``cmd`` (a script's ``--memory-child`` mode) in a fresh process and parse its MEMORY line."""
    import json
    import subprocess

    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"memory child {name} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(line[len("MEMORY ") :])
    print(f"memory {name}: +{result['peak_extra_mib']:.0f} MiB at peak", flush=True)
    return result
