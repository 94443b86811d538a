"""What the run's restartable Ray actors share: their restart budget, arguments that survive a restart,
and one line for a failure (an out-of-memory kill said as such) instead of Ray's several screens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ray

from .errors import RunError

MAX_RESTARTS = 3  # a worker that dies is restarted (and its task retried) this many times, then the run stops


@dataclass(frozen=True)
class ByRef:
    """An object-store value handed to an actor *inside* an argument, so Ray does not resolve it.

    Actors that restart must not take object-store values as top-level constructor
    arguments (Ray logs an ERROR for each such actor): the driver keeps the ref
    alive and the actor fetches it in its constructor, on every (re)start.
    """

    ref: "ray.ObjectRef"

    def get(self, timeout_s: float = 600.0) -> object:
        return ray.get(self.ref, timeout=timeout_s)


_OOM = re.compile(r"out of memory|low on memory|memory monitor|OutOfMemory|\bOOM\b", re.IGNORECASE)


def out_of_memory(exc: BaseException) -> bool:
    """Was this Ray failure an out-of-memory kill (Ray's memory monitor, or the kernel's OOM killer as Ray saw it)?"""
    return isinstance(exc, ray.exceptions.OutOfMemoryError) or bool(_OOM.search(str(exc)))


def ray_failure(exc: BaseException, phase: str, who: str) -> RunError:
    """One line for a Ray failure during ``phase`` in ``who``: an out-of-memory kill says so, with the
    node's memory where Ray reported it, and names the knobs that lower the run's memory; anything else
    (a dead actor, a lost node) gives its type and first line. Ray's own report is several screens."""
    text = str(exc)
    pid = re.search(r"\bpid[=:]\s*(\d+)", text)
    ip = re.search(r"\b(?:ip|IP)[=:]\s*([0-9a-fA-F.:]+[0-9a-fA-F])", text)
    where = who + "".join(f", {k} {m.group(1)}" for k, m in (("pid", pid), ("node", ip)) if m)
    if out_of_memory(exc):
        used = re.search(r"was (\d+(?:\.\d+)?GB / \d+(?:\.\d+)?GB)", text)
        node = f" (node memory {used.group(1)})" if used else ""
        return RunError(f"{phase}: {where} was killed for lack of memory{node}; lower --workers, --cohort or "
                        "--samples-per-client, or run on a machine (or cluster) with more memory")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return RunError(f"{phase}: {where} failed ({type(exc).__name__}: {first[:160]})")
