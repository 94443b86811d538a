"""Starting or joining Ray, sizing the worker pool, and reserving the mask trainer's resources."""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from .errors import ConfigError, RunError

log = logging.getLogger(__name__)

OBJECT_STORE_CAP_BYTES = 8 * 1024**3


def wait_for_address(address: str, timeout_s: float) -> None:
    """Block until something accepts TCP connections at ``address`` (host:port or ray://host:port).

    ``ray.init`` retries an unreachable address for minutes with repeated
    warnings; probing first turns that into one line after ``timeout_s``.
    ``auto`` and ``local`` are left to Ray (it fails fast when no cluster runs).
    """
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"Ray address {address!r} is not host:port, ray://host:port, auto or local")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise RunError(
                    f"no Ray cluster answers at {address} (waited {timeout_s:.0f}s); start one (`ray start --head` "
                    f"or `ray up cluster/cluster.yaml`), fix --address, or drop it to run locally") from None
            time.sleep(0.5)


def init_ray(address: str | None = None, num_cpus: int | None = None, connect_timeout_s: float = 30.0) -> bool:
    """Join ``address`` (or $RAY_ADDRESS), else start a local Ray; returns True if this call started it.

    A local start has no dashboard, a capped object store, and authentication
    mode pinned (``RAY_AUTH_MODE``, default ``disabled``) so driver and workers agree.
    Joining waits at most ``connect_timeout_s`` for the cluster to answer.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        wait_for_address(address, connect_timeout_s)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except ConnectionError as exc:
            raise RunError(f"could not join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        return True
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ray.init(
        address="local",  # always a fresh local instance, never a stray one found on the machine
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=int(min(OBJECT_STORE_CAP_BYTES, 0.3 * total)),
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


@dataclass
class Layout:
    """How many client workers, with what logical CPU share, and the trainer's bundle."""

    workers: int
    worker_cpus: float
    trainer_bundle: dict[str, float]
    gpu: bool


def plan_layout(requested_workers: int | None, clients: int, device: str) -> Layout:
    """Size the pool from the cluster's resources.

    One client worker per CPU core (each trains with one torch thread and asks
    for at most one logical CPU, so it fits on any node), never more workers
    than clients. The mask trainer's bundle (1 GPU + 1 CPU when the
    cluster has GPUs and the device allows it, else 1 CPU) is reserved first;
    the workers share the remaining logical CPUs, so client workers can never
    starve the trainer and no request can deadlock (phases do not overlap).
    """
    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 1.0))
    gpu = device != "cpu" and float(res.get("GPU", 0.0)) >= 1.0
    if device == "cuda" and not gpu:
        raise ConfigError("device cuda was asked for, but the Ray cluster has no GPU; use --device auto or cpu")
    trainer_cpu = 1.0 if cpus >= 2 else 0.5 * cpus
    bundle = {"CPU": trainer_cpu, **({"GPU": 1.0} if gpu else {})}
    workers = requested_workers or max(1, int(cpus))
    workers = max(1, min(workers, clients))
    share = min(1.0, (cpus - trainer_cpu) / workers)  # a worker trains with one thread: never ask for more
    worker_cpus = max(0.01, float(int(share * 100)) / 100)
    return Layout(workers, worker_cpus, bundle, gpu)


def reserve_trainer(layout: Layout, timeout_s: float = 120.0) -> PlacementGroup:
    """A placement group holding the mask trainer's bundle; a clear error if it cannot be placed."""
    pg = placement_group([layout.trainer_bundle], strategy="PACK")
    ready = pg.wait(timeout_seconds=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(
            f"could not reserve {layout.trainer_bundle} for the mask trainer within {timeout_s:.0f}s; "
            f"cluster resources: {ray.cluster_resources()}"
        )
    return pg


def rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pss_mb() -> float:
    """Proportional set size of this process now, in MB: shared pages divided among their users.

    Summed over the run's processes it counts shared pages (torch's libraries, Ray's object store)
    once, unlike summed peak RSS. 0 where /proc/self/smaps_rollup is missing.
    """
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (Linux), so a run in a long-lived process measures only itself."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


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


def fetch(value: object) -> object:
    """``value`` itself, or the object behind a :class:`ByRef`."""
    return value.get() if isinstance(value, ByRef) else value


MAX_RESTARTS = 3  # a worker that dies is restarted (and its task retried) this many times, then the run stops
