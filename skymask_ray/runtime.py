"""Starting or joining Ray, sizing the worker pool, and reserving the mask trainer's resources."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

log = logging.getLogger(__name__)

OBJECT_STORE_CAP_BYTES = 8 * 1024**3


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or $RAY_ADDRESS), else start a local Ray; returns True if this call started it.

    A local start has no dashboard, a capped object store, and authentication
    mode pinned (``RAY_AUTH_MODE``, default ``disabled``) so driver and workers agree.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
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
