"""The Ray cluster's nodes as the planner sees them: Ray's node list, and what torch can do with each GPU.

Ray lists a GPU resource whether or not torch on that node can compute on it
(a fake GPU, an old driver, a CPU build of torch), so GPU nodes are probed by
a tiny task (:func:`probe_gpus`) before anything is placed on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .errors import RunError

PROBE_TIMEOUT_S = 60.0  # a GPU node whose probe has not run by then counts as "CUDA unknown"
PROBE_GPU = 0.01  # the probe's GPU request: enough for Ray to expose the GPU, fits beside anything


@dataclass(frozen=True)
class NodeInfo:
    """One Ray node as the planner sees it (from ``ray.nodes()``, plus the CUDA probe for GPU nodes)."""

    node_id: str
    ip: str
    cpus: float
    gpus: float = 0.0
    cuda: bool | None = None  # torch on this node can compute on its GPU (None: not probed, or no answer)
    gpu_memory: int | None = None  # bytes of one of its GPUs (from the probe)
    gpu_name: str = ""  # the probe's device name, else Ray's accelerator_type
    note: str = ""  # why CUDA is not usable there


def short_id(node_id: str) -> str:
    """A Ray node id short enough for a log line: its last 6 hex digits (the fake nodes of a one-machine
    cluster, fff...f00001, differ only there)."""
    return node_id[-6:]


def node_label(node_id: str, ip: str, ips: list[str]) -> str:
    """How lines name a node: its IP, with its :func:`short_id` where nodes share the IP (one machine)."""
    return ip if ips.count(ip) <= 1 else f"{ip}/{short_id(node_id)}"


def cluster_nodes() -> list[NodeInfo]:
    """The live nodes of the Ray cluster with their total CPUs and GPUs (``ray.nodes()``)."""
    out = []
    for n in ray.nodes():
        if not n.get("Alive", False):
            continue
        res = n.get("Resources", {}) or {}
        acc = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), "")
        out.append(NodeInfo(str(n["NodeID"]), str(n.get("NodeManagerAddress", "?")), float(res.get("CPU", 0.0)),
                            float(res.get("GPU", 0.0)), gpu_name=acc))
    return out


def cuda_status() -> tuple[bool, str]:
    """Can torch in this process compute on a CUDA GPU? (ok, why not): a real kernel runs, not just a flag."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    if not ok:
        said = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), "")
        if torch.version.cuda is None:
            said = said or "a CPU-only build"
        return False, f"torch {torch.__version__}: {said or 'no CUDA device visible'}"[:300]
    try:
        (torch.ones(2, device="cuda") * 2).sum().item()
    except Exception as exc:  # noqa: BLE001 - a driver/architecture mismatch surfaces here as any error
        return False, f"torch {torch.__version__}: {str(exc).strip().splitlines()[0][:200]}"
    return True, ""


def _cuda_probe() -> dict[str, Any]:
    """Run on a GPU node (as a task holding a sliver of its GPU): what torch there can do with it."""
    import torch

    ok, why = cuda_status()
    props = torch.cuda.get_device_properties(0) if ok else None
    return {"cuda": ok, "note": why, "memory": int(props.total_memory) if props else None,
            "name": props.name if props else ""}


_PROBED: dict[str, dict[str, Any]] = {}  # node id -> probe answer (a node's CUDA does not change while it lives)


def probe_gpus(nodes: list[NodeInfo], timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeInfo]:
    """``nodes`` with ``cuda``/``gpu_memory``/``gpu_name`` filled in for GPU nodes, by one tiny task per node.

    The task asks for ``PROBE_GPU`` of a GPU on that node (so Ray exposes the GPU to it, as to a worker)
    and no CPU; its process exits after it (no CUDA context left on the GPU). Answers are kept per node
    for this process; a node whose probe does not run within ``timeout_s`` (its GPUs all held) stays
    ``cuda=None``. Call before the trainer's bundle is reserved.
    """
    todo = [n for n in nodes if n.gpus > 0 and n.node_id not in _PROBED]
    if todo:
        task = ray.remote(max_calls=1)(_cuda_probe)
        refs = {n.node_id: task.options(num_cpus=0, num_gpus=PROBE_GPU, max_retries=0,
                                        scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                .remote() for n in todo}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        for node_id, ref in refs.items():
            if ref not in ready:
                ray.cancel(ref, force=True)
                continue
            try:
                _PROBED[node_id] = ray.get(ref)
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()
                _PROBED[node_id] = {"cuda": False, "note": f"the probe failed: {first[0][:200] if first else exc}",
                                    "memory": None, "name": ""}
    out = []
    for n in nodes:
        got = _PROBED.get(n.node_id)
        if n.gpus <= 0:
            out.append(n)
        elif got is None:
            out.append(replace(n, cuda=None, note=f"the CUDA probe did not run within {timeout_s:.0f}s"))
        else:
            out.append(replace(n, cuda=bool(got["cuda"]), note=got["note"], gpu_memory=got["memory"],
                               gpu_name=got["name"] or n.gpu_name))
    return out


def require_cuda(what: str) -> None:
    """Stop with one line naming this node if torch here cannot use the GPU Ray assigned to ``what``."""
    ok, why = cuda_status()
    if not ok:
        raise RunError(f"{what} on node {ray.util.get_node_ip_address()} was given a GPU by Ray, but torch there "
                       f"cannot use CUDA ({why}); fix that node's NVIDIA driver or torch build (cluster/README.md), "
                       f"or pass --device cpu")
