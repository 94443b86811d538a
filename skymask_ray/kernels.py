"""Choosing between implementations of one result by timing them on the running machine.

The same exact result can cost very different times on different machines:
the int8 product behind the bits' Gram matrix (``torch._int_mm``) took 0.23 s
on one 2-core AMD EPYC with AVX-512 VNNI and 71 s on another EPYC, where the
float32 product of the same 0/1 matrix took 0.54 s. So no choice here is made
by assumption: :func:`choose` times every candidate on a probe input and keeps
the fastest, and the answer is cached per machine (CPU model and flags, torch
version and build, device name, thread count) and problem-size bucket in
``~/.cache/skymask-ray/kernels.json`` (``SKYMASK_RAY_CACHE`` moves it), like
torch's compile cache, so a machine pays for a probe once.

Probing stays short on a machine where one candidate is very slow: every
candidate first runs once on a small input, and one more than
:data:`DROP_FACTOR` times slower than the best is dropped before the
full-size probe. A cache that cannot be read or written is ignored (the probe
runs again); it never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ResultsWriteError
from .storage import atomic_write_text

log = logging.getLogger(__name__)

DROP_FACTOR = 3.0  # a candidate this much slower than the best on the small probe is not probed further
REPEATS = 3  # timed calls per candidate on the full-size probe (the minimum counts)
MARGIN = 0.1  # another candidate replaces the default only if it takes less than 90 % of the default's time
CACHE_VERSION = 1

Candidate = Callable[[int], Any]
"""A candidate implementation run on a probe of a given size (its argument); its return value is ignored."""


@dataclass(frozen=True)
class Choice:
    """Which implementation of ``op`` runs, and the probe times (seconds) it was chosen by."""

    op: str
    chosen: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    note: str = ""

    def summary(self) -> str:
        """``op=chosen`` with the probe times, e.g. ``gram=float32 (float32 0.012s, int8 0.4s; cached)``."""
        times = ", ".join(f"{k} {v:.3g}s" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        extra = "; ".join(x for x in (times, "cached" if self.cached else "", self.note) if x)
        return f"{self.op}={self.chosen}" + (f" ({extra})" if extra else "")


def _cpu_model() -> tuple[str, str]:
    """(model name, hash of the feature flags) from /proc/cpuinfo; the platform's processor elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "CPU part") and key not in info:
            info[key] = value.strip()
    flags = info.get("flags") or info.get("Features", "")
    model = info.get("model name") or info.get("CPU part") or platform.machine()
    return model, hashlib.blake2b(flags.encode(), digest_size=6).hexdigest()


def machine_key(device: torch.device | str) -> str:
    """What a probe's answer depends on: CPU, torch build, device (its name for a GPU) and threads."""
    device = torch.device(device)
    model, flags = _cpu_model()
    what = device.type
    if device.type == "cuda":
        what = f"cuda:{torch.cuda.get_device_name(device)}"
    return (f"{model} [{flags}] | torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}) | "
            f"{what} | {torch.get_num_threads()} threads")


def cache_path() -> Path:
    """The probe cache file (``$SKYMASK_RAY_CACHE`` or ``$XDG_CACHE_HOME``/``~/.cache`` + skymask-ray)."""
    root = os.environ.get("SKYMASK_RAY_CACHE")
    if root:
        return Path(root) / "kernels.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skymask-ray" / "kernels.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc.get("entries", {}) if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    entries = _read_cache(path)  # re-read: another process may have added its own entries meanwhile
    entries[key] = entry
    try:
        atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True))
    except ResultsWriteError as exc:
        log.debug("kernel probe cache not written: %s", exc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(f: Candidate, size: int, device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``f(size)``."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        f(size)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(candidates: dict[str, Candidate], device: torch.device | str, small: int, full: int,
            repeats: int = REPEATS) -> dict[str, float]:
    """Seconds per candidate at size ``full``; one far slower than the best at ``small`` is timed there only.

    Every candidate runs once at ``small`` (which also warms it up), then the
    ones within :data:`DROP_FACTOR` of the best run ``repeats`` times at
    ``full``. A dropped candidate's time is its small-probe time scaled to
    ``full`` (linear in the size), so the table still says how far off it was.
    ``repeats`` 0: each candidate's one first call is its time (for what only
    a first call shows, such as touching new memory).
    """
    device = torch.device(device)
    first = {name: _time(f, small, device, 1) for name, f in candidates.items()}
    if repeats == 0:
        return first
    best = min(first.values())
    out = {}
    for name, f in candidates.items():
        if first[name] > DROP_FACTOR * best and small < full:
            out[name] = first[name] * full / max(small, 1)
        else:
            out[name] = _time(f, full, device, repeats)
    return out


def choose(op: str, bucket: str, candidates: dict[str, Candidate], device: torch.device | str, *, small: int,
           full: int, use_cache: bool = True, repeats: int = REPEATS) -> Choice:
    """The fastest of ``candidates`` for ``op`` at problem size ``bucket`` on this machine (probed or cached).

    ``candidates`` must compute the same result; the first is the default,
    kept unless another is faster by more than :data:`MARGIN`. ``bucket`` names the problem
    size class the answer holds for (the cache key includes it).
    """
    if not candidates:
        raise ValueError(f"no candidate implementation for {op}")
    if len(candidates) == 1:
        return Choice(op, next(iter(candidates)), note="only candidate")
    path = cache_path()
    key = f"{machine_key(device)} | {op} | {bucket} | {','.join(candidates)}"
    if use_cache:
        hit = _read_cache(path).get(key)
        if isinstance(hit, dict) and hit.get("chosen") in candidates:
            return Choice(op, hit["chosen"], dict(hit.get("seconds", {})), cached=True)
    seconds = measure(candidates, device, small, full, repeats)
    default = next(iter(candidates))
    fastest = min(candidates, key=lambda name: seconds[name])
    # another candidate replaces the default only when clearly faster: a near tie is noise, not a reason
    chosen = fastest if seconds[fastest] < (1 - MARGIN) * seconds[default] else default
    choice = Choice(op, chosen, seconds)
    if use_cache:
        _write_cache(path, key, {**asdict(choice), "cached": False, "probed_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    log.info("kernel probe: %s", choice.summary())
    return choice


def _numpy_hugepage_switch() -> Callable[[bool], bool] | None:
    """numpy's switch for asking the kernel for huge pages on large arrays (returns the previous setting)."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # numpy 1.x
        except ImportError:
            return None
    return _set_madvise_hugepage


HUGEPAGE_PROBE_BYTES = 128 * 1024**2  # above glibc's largest mmap threshold (32 MB): memory new to the process


def tune_numpy_allocations() -> Choice:
    """Let numpy ask for transparent huge pages on large arrays only where that makes allocating them faster.

    numpy madvises huge pages for every large array. Where the kernel answers by compacting memory
    on the spot (THP ``defrag: madvise``), first touching a new array is slow: 188 MB took 1.56 s
    with the advice and 0.09 s without on a 2-core VM here, the whole cost of loading Fashion-MNIST.
    Elsewhere huge pages are cheap and spare TLB misses. So both are timed on a fresh array
    (:func:`choose`, cached per machine and kernel) and the faster is set for this process; call it
    in every process that builds large arrays (the driver, client workers, the mask trainer). ``plain``
    is the default: it wins ties.
    """
    switch = _numpy_hugepage_switch()
    if switch is None:
        return Choice("numpy_hugepages", "default", note="numpy has no switch")
    import numpy as np

    def touch(advise: bool) -> Candidate:
        def run(n: int) -> None:
            switch(advise)
            np.ones(n // 4, dtype=np.float32)

        return run

    thp = Path("/sys/kernel/mm/transparent_hugepage/defrag")
    try:
        bucket = f"{platform.release()} defrag {thp.read_text().strip()}"
    except OSError:
        bucket = platform.release()
    # one first touch each (what a run pays), the plain one first: huge pages compacted for the other would be
    # free for the second and hide its cost
    choice = choose("numpy_hugepages", bucket, {"plain": touch(False), "madvise": touch(True)}, "cpu",
                    small=HUGEPAGE_PROBE_BYTES, full=HUGEPAGE_PROBE_BYTES, repeats=0)
    switch(choice.chosen == "madvise")
    return choice
