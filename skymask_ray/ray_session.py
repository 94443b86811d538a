"""Starting or joining Ray: the address probe, a local start's settings (object store cap, auth mode).

A run either joins a cluster (``--address`` or $RAY_ADDRESS) or starts a fresh
local Ray of its own; :func:`joins_cluster` says which, because only a joined
cluster may autoscale (:func:`~skymask_ray.layout.plan_layout`'s ``grow``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

import ray

from .errors import ConfigError, RunError
from .procfs import total_memory

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
    ray.init(
        address="local",  # always a fresh local instance, never a stray one found on the machine
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=int(min(OBJECT_STORE_CAP_BYTES, 0.3 * total_memory())),
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


def joins_cluster(address: str | None) -> bool:
    """Does a run with this ``--address`` (else $RAY_ADDRESS) join a running cluster, rather than start Ray here?

    Only a joined cluster can have an autoscaler, so only there may workers wait for nodes
    (:func:`~skymask_ray.layout.plan_layout`).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    return bool(address) and address != "local"
