"""Where a run's work goes: the mask trainer's bundle and the client workers, planned per node and reserved.

:func:`plan_layout` is a pure function of the nodes (:mod:`skymask_ray.nodes`);
:func:`setup_layout` reads and probes the live nodes, reserves the trainer's
bundle in a placement group and plans the client workers around it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from .errors import ConfigError, RunError
from .nodes import NodeInfo, cluster_nodes, node_label, probe_gpus

log = logging.getLogger(__name__)

DEFAULT_WORKERS_PER_GPU = 4  # client workers per GPU when its memory (or the model's size) is unknown
MAX_WORKERS_PER_GPU = 8  # the default's ceiling: processes time-slice a GPU (no MPS), a few hide each other's gaps
CUDA_CONTEXT_BYTES = 768 * 1024**2  # one process's CUDA context and allocator slack (an estimate)
VMAP_BYTES_PER_PARAM = 16 * 4  # per client of a vmap chunk: weights, gradients, copies, activations (an estimate)
GPU_MEMORY_FRACTION = 0.8  # of a GPU's memory that the default plans to fill
GPU_WORKER_WEIGHT = 16.0
"""Clients one GPU trains per client one CPU worker trains, used to share clients between the two kinds
(a GPU worker with 1/k of a GPU gets GPU_WORKER_WEIGHT / k times a CPU worker's share). An unmeasured
estimate: ``python -m benchmarks.gpu_check`` prints the measured rates to set it from."""
GROW_TIMEOUT_S = 600.0
"""How long client workers that the nodes present cannot hold wait for nodes the autoscaler adds (a
cloud node boots and installs in minutes) before the run stops with one line."""


@dataclass(frozen=True)
class NodePlan:
    """What one node hosts: the mask trainer's bundle or not, and ``workers`` identical client workers."""

    node_id: str
    ip: str
    cpus: float
    gpus: float
    cuda: bool | None
    gpu_name: str
    gpu_memory: int | None
    trainer: bool
    workers: int
    device: str  # cpu | cuda: where this node's client workers train
    worker_cpus: float
    worker_gpus: float
    weight: float  # each worker's share of the clients relative to a CPU worker's


PENDING = NodePlan("", "", 0.0, 0.0, None, "", None, False, 0, "cpu", 1.0, 0.0, 1.0)
"""The plan of a client worker that no node present can hold: one CPU, on no node in particular. Ray
queues it, and on an autoscaling cluster the queued request is the demand that adds a node for it."""


@dataclass
class Layout:
    """Where a run's work goes: the trainer's bundle (reserved first) and the client workers per node.

    ``workers``/``worker_cpus``/``trainer_bundle``/``gpu`` summarise it (``gpu``: the trainer's bundle
    holds a GPU); ``nodes`` has one entry per node of the cluster, hosting nothing or one kind of worker.
    """

    workers: int
    worker_cpus: float
    trainer_bundle: dict[str, float]
    gpu: bool
    nodes: list[NodePlan] = field(default_factory=list)
    trainer_node: str | None = None
    device: str = "auto"
    workers_per_gpu: int | None = None
    notes: list[str] = field(default_factory=list)  # warnings (GPUs torch cannot use), logged at set-up
    pending: int = 0  # of ``workers``: 1-CPU workers no node present can hold, left to Ray (and its autoscaler)

    def worker_plans(self) -> list[NodePlan]:
        """One entry per client worker (its node, device and resources), node by node, then the pending ones."""
        return [p for p in self.nodes for _ in range(p.workers)] + [PENDING] * self.pending

    def _labels(self) -> dict[str, str]:
        ips = [p.ip for p in self.nodes]
        return {p.node_id: node_label(p.node_id, p.ip, ips) for p in self.nodes}

    def summary(self) -> str:
        """One line: workers per node and device, and where the trainer's bundle is."""
        labels = self._labels()
        parts = []
        for p in self.nodes:
            if p.workers:
                res = f"{p.worker_gpus:g} GPU + " if p.device == "cuda" else ""
                res += f"{p.worker_cpus:g} CPU"
                parts.append(f"{p.workers} x {res} on {labels[p.node_id]}")
        if self.pending:
            parts.append(f"{self.pending} x 1 CPU on nodes to come")
        trainer = " + ".join(f"{v:g} {k}" for k, v in sorted(self.trainer_bundle.items(), reverse=True))
        where = labels.get(self.trainer_node or "", "?")
        return f"{self.workers} client workers ({', '.join(parts) or 'none'}); mask trainer: {trainer} on {where}"

    def describe(self) -> dict[str, Any]:
        """The layout as plain JSON-able values (what ``OUT/_state/layout.json`` holds)."""
        return {
            "device": self.device, "workers": self.workers, "pending_workers": self.pending,
            "workers_per_gpu": self.workers_per_gpu,
            "trainer": {"node_id": self.trainer_node, "bundle": dict(self.trainer_bundle)},
            "nodes": [{**asdict(p), "gpu_memory_gb": None if p.gpu_memory is None else round(p.gpu_memory / 1024**3, 2)}
                      for p in self.nodes],
            "notes": list(self.notes),
        }


def default_workers_per_gpu(gpu_memory: int | None, model_params: int | None, vmap_chunk: int = 32) -> int:
    """k client workers per GPU: as many as fit in ``GPU_MEMORY_FRACTION`` of its memory, 1 to ``MAX_WORKERS_PER_GPU``.

    A worker costs a CUDA context plus a vmap chunk's state (``VMAP_BYTES_PER_PARAM`` bytes per parameter
    per client of the chunk); ``DEFAULT_WORKERS_PER_GPU`` when the memory or the model's size is unknown.
    """
    if not gpu_memory or not model_params:
        return DEFAULT_WORKERS_PER_GPU
    per_worker = CUDA_CONTEXT_BYTES + VMAP_BYTES_PER_PARAM * max(1, vmap_chunk) * model_params
    return max(1, min(MAX_WORKERS_PER_GPU, int(GPU_MEMORY_FRACTION * gpu_memory // per_worker)))


def _apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the earlier entry)."""
    s = sum(weights)
    if total <= 0 or s <= 0:
        return [0] * len(weights)
    raw = [total * w / s for w in weights]
    out = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def _floor(x: float, digits: int) -> float:
    return math.floor(x * 10**digits + 1e-9) / 10**digits


def _trainer_node(nodes: list[NodeInfo], gpu: bool, trainer_cpu: float) -> str:
    """Where the trainer's bundle is expected: a GPU node (one torch can use first), else the node with most CPUs."""
    if gpu:
        cands = [n for n in nodes if n.gpus >= 1]
        return min(cands, key=lambda n: (n.cuda is not True, n.cpus < trainer_cpu, cands.index(n))).node_id
    return max(nodes, key=lambda n: (n.cpus, -nodes.index(n))).node_id


def plan_layout(requested_workers: int | None, clients: int, device: str, nodes: list[NodeInfo] | None = None, *,
                workers_per_gpu: int | None = None, model_params: int | None = None, vmap_chunk: int = 32,
                trainer_node: str | None = None, grow: bool = False) -> Layout:
    """Place the mask trainer's bundle and the client workers on the cluster's nodes.

    A pure function of ``nodes`` (read from ``ray.nodes()`` and probed when None).

    * The trainer's bundle is 1 GPU + 1 CPU when the cluster has a GPU and ``device`` is not cpu, else
      1 CPU (half the CPUs of a one-CPU cluster). It is reserved first (:func:`setup_layout`); the workers
      plan around it: on its node they count that node's GPUs minus the trainer's one and its CPUs minus
      the trainer's CPU, so they can never take its GPU or starve it.
    * Which GPUs client workers use, by ``device``:

      - ``cpu``: none; no GPU is requested at all.
      - ``auto``: those of nodes whose probe found CUDA usable by torch. A node whose GPUs torch cannot
        use (a fake GPU resource, a driver older than torch's CUDA, a CPU build of torch) keeps CPU
        workers, with a warning in ``notes``: a GPU Ray merely lists is not trusted.
      - ``cuda``: every GPU. A node whose probe found CUDA unusable is a :class:`RunError` naming it; a
        worker that finds no CUDA on the GPU Ray gave it stops the run the same way (no silent CPU fallback).

    * A node with usable GPUs hosts k client workers per GPU (``workers_per_gpu``, else
      :func:`default_workers_per_gpu` from its GPU's memory and the model's size, at most one per CPU of
      the node), each asking ``1/k`` GPU and an equal share (at most 1) of the node's free CPUs; they
      train with the vmap path (``client_exec: auto``; BatchNorm models train sequentially on the GPU).
      Every other node with free CPUs hosts CPU workers: one per CPU core (its share of the free logical
      CPUs, at most 1: phases do not overlap, so the trainer's core is used by clients while it waits).
    * ``requested_workers`` (``--workers``) sets the total: GPU workers first (k per GPU), the rest on the
      CPU nodes in proportion to their free CPUs (onto the GPU nodes if there are none). Never more
      workers than clients.
    * ``grow`` (a joined cluster, which may autoscale): requested workers beyond what the nodes present
      hold at one per CPU core (or per GPU slot) are not squeezed onto them but ``pending``: 1-CPU
      workers on no node in particular, which Ray queues until a node has room. The queued requests
      are the autoscaler's demand, so the cluster grows to the pool asked for.
    * Each worker's ``weight`` (1 for a CPU worker, ``GPU_WORKER_WEIGHT / k`` for a GPU worker) is its
      share of the clients relative to a CPU worker's (:class:`~skymask_ray.clients.pool.ClientPool`).
    """
    if nodes is None:
        nodes = cluster_nodes()
        if device != "cpu":
            nodes = probe_gpus(nodes)
    nodes = [n for n in nodes if n.cpus > 0 or n.gpus > 0]
    if not nodes:
        raise RunError("the Ray cluster lists no node with CPUs or GPUs")
    total_cpus = sum(n.cpus for n in nodes)
    gpu = device != "cpu" and any(n.gpus >= 1 for n in nodes)
    if device == "cuda" and not gpu:
        raise ConfigError("device cuda was asked for, but the Ray cluster has no GPU; use --device auto or cpu")
    if device == "cuda":
        broken = [n for n in nodes if n.gpus >= 1 and n.cuda is False]
        if broken:
            n, more = broken[0], f" (and {len(broken) - 1} more GPU node(s))" if len(broken) > 1 else ""
            raise RunError(f"device cuda: node {n.ip}{more} has {n.gpus:g} GPU(s) in Ray, but torch there cannot use "
                           f"CUDA ({n.note or 'no reason given'}); fix its NVIDIA driver or torch build "
                           f"(cluster/README.md), or use --device auto (CPU workers there) or --device cpu")
    trainer_cpu = 1.0 if total_cpus >= 2 else 0.5 * total_cpus
    bundle = {"CPU": trainer_cpu, **({"GPU": 1.0} if gpu else {})}
    if trainer_node is None or all(n.node_id != trainer_node for n in nodes):
        trainer_node = _trainer_node(nodes, gpu, trainer_cpu)

    notes: list[str] = []
    ips = [n.ip for n in nodes]
    gpu_hosts: list[tuple[NodeInfo, int, int, float]] = []  # node, usable GPUs, k, free CPUs
    cpu_hosts: list[tuple[NodeInfo, float]] = []  # node, free CPUs
    for n in nodes:
        on_trainer = n.node_id == trainer_node
        cpus_free = max(0.0, n.cpus - (trainer_cpu if on_trainer else 0.0))
        gpus_free = max(0, math.floor(n.gpus - (1.0 if on_trainer and gpu else 0.0) + 1e-9))
        usable = device == "cuda" or (device == "auto" and n.cuda is True)
        if device == "auto" and n.gpus >= 1 and n.cuda is not True:
            why, label = n.note or "not probed", node_label(n.node_id, n.ip, ips)
            if gpus_free >= 1:
                notes.append(f"node {label}: Ray lists {n.gpus:g} GPU(s) but torch there cannot use CUDA ({why}); its "
                             f"client workers train on its CPUs (--device cuda makes this an error)")
            elif on_trainer and gpu:
                notes.append(f"node {label}: the mask trainer holds a GPU there but torch cannot use CUDA ({why}); "
                             f"it computes on the node's CPU")
        if usable and gpus_free >= 1:
            k = workers_per_gpu or min(default_workers_per_gpu(n.gpu_memory, model_params, vmap_chunk),
                                       max(1, math.floor(n.cpus / gpus_free)))
            gpu_hosts.append((n, gpus_free, k, cpus_free))
        elif cpus_free > 0:
            cpu_hosts.append((n, cpus_free))
    if not gpu_hosts and not cpu_hosts and not (grow and requested_workers):
        raise RunError(f"no CPU or GPU is left for client workers once the mask trainer has {bundle}; "
                       f"cluster nodes: {[(n.ip, n.cpus, n.gpus) for n in nodes]}")

    slots = [g * k for _, g, k, _ in gpu_hosts]
    cpu_default = [max(1, round(n.cpus)) for n, _ in cpu_hosts]
    want = requested_workers or sum(slots) + sum(cpu_default)
    want = max(1, min(want, clients))
    gpu_counts = _apportion(min(want, sum(slots)), slots)
    rest = want - sum(gpu_counts)
    cpu_counts = [0] * len(cpu_hosts)
    cpu_cores = [max(1, math.floor(free + 1e-9)) for _, free in cpu_hosts]  # one worker per core, at least one
    pending = 0
    if grow and requested_workers is not None and rest > sum(cpu_cores):
        cpu_counts, pending = cpu_cores, rest - sum(cpu_cores)
    elif rest and cpu_hosts:
        cpu_counts = _apportion(rest, [float(c) for c in cpu_default] if requested_workers is None
                                else [free for _, free in cpu_hosts])
    elif rest:
        gpu_counts = [a + b for a, b in zip(gpu_counts, _apportion(rest, slots))]

    per_node: dict[str, tuple[int, str, float, float, float]] = {}
    for (n, g, _, free), w in zip(gpu_hosts, gpu_counts):
        if w:
            share = _floor(min(1.0, g / w), 4)
            per_node[n.node_id] = (w, "cuda", _floor(min(1.0, free / w), 2), share, GPU_WORKER_WEIGHT * share)
    for (n, free), w in zip(cpu_hosts, cpu_counts):
        if w:
            per_node[n.node_id] = (w, "cpu", max(0.01, _floor(min(1.0, free / w), 2)), 0.0, 1.0)
    plans = []
    for n in nodes:
        w, dev, cpus, gpus, weight = per_node.get(n.node_id, (0, "cpu", 0.0, 0.0, 0.0))
        plans.append(NodePlan(n.node_id, n.ip, n.cpus, n.gpus, n.cuda, n.gpu_name, n.gpu_memory,
                              n.node_id == trainer_node, w, dev, cpus, gpus, weight))
    used = [p for p in plans if p.workers] + ([PENDING] if pending else [])
    ks = sorted({k for (_, _, k, _), w in zip(gpu_hosts, gpu_counts) if w})
    return Layout(sum(p.workers for p in plans) + pending, min(p.worker_cpus for p in used), bundle, gpu, plans,
                  trainer_node, device, ks[0] if len(ks) == 1 else workers_per_gpu if ks else None, notes, pending)


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


def trainer_node_of(pg: PlacementGroup) -> str | None:
    """The node a reserved placement group's first bundle sits on."""
    table = ray.util.placement_group_table(pg)
    where = table.get("bundles_to_node_id") or {}
    return where.get(0)


def setup_layout(requested_workers: int | None, clients: int, device: str, *, workers_per_gpu: int | None = None,
                 model_params: int | None = None, vmap_chunk: int = 32, timeout_s: float = 120.0,
                 grow: bool = False) -> tuple[Layout, PlacementGroup]:
    """Read the nodes, probe their GPUs, reserve the trainer's bundle, then plan the client workers around it.

    The probe runs before anything is reserved (a one-GPU node's GPU is then free for it), and a plan
    that cannot work (device cuda on a GPU torch cannot use) fails before the reservation. The workers
    are planned once the trainer's node is known, so they leave exactly its bundle alone. Notes (GPUs
    torch cannot use) are logged as warnings. ``grow``: see :func:`plan_layout` (workers that no node
    present holds wait for nodes).
    """
    nodes = cluster_nodes()
    if device != "cpu":
        nodes = probe_gpus(nodes)
    kw = {"workers_per_gpu": workers_per_gpu, "model_params": model_params, "vmap_chunk": vmap_chunk, "grow": grow}
    draft = plan_layout(requested_workers, clients, device, nodes, **kw)
    pg = reserve_trainer(draft, timeout_s)
    try:
        layout = plan_layout(requested_workers, clients, device, nodes, trainer_node=trainer_node_of(pg), **kw)
    except BaseException:
        remove_placement_group(pg)
        raise
    for note in layout.notes:
        log.warning(note)
    log.info("layout: %s", layout.summary())
    return layout, pg
