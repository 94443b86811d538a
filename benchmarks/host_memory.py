"""Peak memory a command adds to this machine, sampled from /proc/meminfo.

Summing every process's peak RSS (the ``peak_rss_mb`` column) counts shared
pages once per process: torch's ~250 MB of mapped libraries, and Ray's object
store pages in /dev/shm in every process that reads them. The machine-level
figure has no double counting: used memory (MemTotal - MemAvailable, object
store included) sampled every ``interval`` seconds while the command runs,
minus the median used before it started. It includes Ray's own daemons, which
belong to the run; other jobs on the machine add noise, so run it alone.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time


def used_mb() -> float:
    """MemTotal - MemAvailable of this machine, in MB."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def run_sampled(cmd: list[str], interval: float = 0.1, baseline_s: float = 1.0) -> dict[str, float]:
    """Run ``cmd`` (it must succeed); returns its wall time and peak added host memory in MB."""
    before = []
    end = time.perf_counter() + baseline_s
    while time.perf_counter() < end:
        before.append(used_mb())
        time.sleep(interval)
    base = statistics.median(before)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], used_mb())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True)
    finally:
        done.set()
        t.join()
    return {"wall_s": time.perf_counter() - t0, "host_peak_mb": peak[0] - base, "host_baseline_mb": base}
