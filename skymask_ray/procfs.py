"""What /proc says about this process and this machine: peak RSS, PSS, the process's age, free memory.

Linux only in substance; every probe has a fallback (or 0) where /proc is
missing, so callers never fail on another OS.
"""

from __future__ import annotations

import os
import resource


def _proc_kb(path: str, field: str) -> float | None:
    """A ``field: N kB`` value of a /proc file of this process, in MB (None where it is missing)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _proc_kb("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pss_mb() -> float:
    """Proportional set size of this process now, in MB: shared pages divided among their users.

    Summed over the run's processes it counts shared pages (torch's libraries, Ray's object store)
    once, unlike summed peak RSS. 0 where /proc/self/smaps_rollup is missing.
    """
    return _proc_kb("/proc/self/smaps_rollup", "Pss") or 0.0


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc), 0 where that cannot be read.

    Taken when a run's set-up begins, it is what the interpreter and the imports cost before.
    """
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK")), 3)


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (Linux), so a run in a long-lived process measures only itself."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def total_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory() -> int:
    """This machine's memory available to a new run now (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        return total_memory()
