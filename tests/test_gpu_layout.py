"""Client workers on GPUs (issue #18): the layout as a pure function of the nodes, and on the session cluster.

The session cluster's GPU is a Ray resource only (torch sees no CUDA), so the live tests check the
rules for a GPU torch cannot use: device auto keeps CPU workers (trainer still on the GPU node),
device cuda stops with one line naming the node, and a worker that Ray gives a GPU without CUDA stops
the pool the same way. Real GPU throughput is ``benchmarks/gpu_check.py``'s job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from ray.util.placement_group import remove_placement_group

from skymask_ray.clients.pool import ClientPool
from skymask_ray.errors import ConfigError, RunError
from skymask_ray.experiment import build_config
from skymask_ray.layout import (
    GPU_WORKER_WEIGHT,
    Layout,
    NodePlan,
    default_workers_per_gpu,
    plan_layout,
    setup_layout,
    trainer_node_of,
)
from skymask_ray.nodes import NodeInfo
from skymask_ray.simulation import Simulation, run_experiment

GB = 1024**3
A10G = 24 * GB
CNN_PARAMS = 139_960


def _gpu_node(node_id="gpu", ip="10.0.0.2", cpus=8, gpus=2, cuda=True, memory=A10G):
    return NodeInfo(node_id, ip, cpus, gpus, cuda=cuda, gpu_memory=memory if cuda else None,
                    note="" if cuda else "torch 2.x+cpu: a CPU-only build")


def _cpu_node(node_id="cpu", ip="10.0.0.3", cpus=16):
    return NodeInfo(node_id, ip, cpus)


def _by_id(layout: Layout) -> dict[str, NodePlan]:
    return {p.node_id: p for p in layout.nodes}


def _check_fits(layout: Layout, nodes: list[NodeInfo]) -> None:
    """No node is asked for more than it has, counting the trainer's bundle."""
    for n in nodes:
        p = _by_id(layout)[n.node_id]
        cpus = p.workers * p.worker_cpus + (layout.trainer_bundle["CPU"] if p.trainer else 0)
        gpus = p.workers * p.worker_gpus + (layout.trainer_bundle.get("GPU", 0) if p.trainer else 0)
        assert cpus <= n.cpus + 1e-9 and gpus <= n.gpus + 1e-9, (n, p)


# ----- the pure planner ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 4])
def test_two_gpu_node_and_cpu_node_device_cuda(k):
    """Trainer's bundle first (1 GPU + 1 CPU on the GPU node); k workers of 1/k GPU on its other GPU; CPU node: CPU workers."""
    nodes = [_gpu_node(), _cpu_node()]
    layout = plan_layout(None, 1000, "cuda", nodes, workers_per_gpu=k, model_params=CNN_PARAMS)
    assert layout.trainer_bundle == {"CPU": 1.0, "GPU": 1.0} and layout.gpu and layout.trainer_node == "gpu"
    gpu, cpu = _by_id(layout)["gpu"], _by_id(layout)["cpu"]
    assert gpu.trainer and gpu.device == "cuda" and gpu.workers == k  # 2 GPUs minus the trainer's one
    assert gpu.worker_gpus == pytest.approx(1 / k, abs=1e-4) and gpu.worker_gpus * k <= 1.0
    assert gpu.worker_cpus == 1.0  # 7 free CPUs (the trainer has one) shared by k workers, at most 1 each
    assert gpu.weight == pytest.approx(GPU_WORKER_WEIGHT / k, rel=1e-3)
    assert cpu.device == "cpu" and cpu.workers == 16 and cpu.worker_cpus == 1.0 and cpu.worker_gpus == 0
    assert layout.workers == k + 16 and layout.workers_per_gpu == k and not layout.notes
    _check_fits(layout, nodes)
    doc = json.loads(json.dumps(layout.describe()))  # plain JSON
    assert doc["trainer"]["bundle"] == {"CPU": 1.0, "GPU": 1.0}
    assert [(n["ip"], n["workers"], n["device"]) for n in doc["nodes"]] == [("10.0.0.2", k, "cuda"),
                                                                           ("10.0.0.3", 16, "cpu")]
    assert f"{k} x {gpu.worker_gpus:g} GPU" in layout.summary() and "mask trainer: 1 GPU + 1 CPU on 10.0.0.2" \
        in layout.summary()


def test_gpu_node_without_the_trainer_gets_k_workers_per_gpu():
    """Trainer on another GPU node: all 2 GPUs of the 2-GPU node host workers (2k), none on the trainer's one-GPU node."""
    nodes = [_gpu_node("g1", "10.0.0.1", cpus=4, gpus=1), _gpu_node("g2", "10.0.0.2"), _cpu_node()]
    layout = plan_layout(None, 1000, "cuda", nodes, workers_per_gpu=3, trainer_node="g1")
    g1, g2, cpu = (_by_id(layout)[i] for i in ("g1", "g2", "cpu"))
    assert g1.trainer and g1.device == "cpu" and g1.workers == 4 and g1.worker_cpus == 0.75  # its GPU is the trainer's
    assert g2.device == "cuda" and g2.workers == 6 and g2.worker_gpus == pytest.approx(1 / 3, abs=1e-4)
    assert cpu.workers == 16
    _check_fits(layout, nodes)


def test_device_auto_uses_only_gpus_torch_can_use():
    real, fake = _gpu_node("real", "10.0.0.2"), _gpu_node("fake", "10.0.0.9", cuda=False)
    layout = plan_layout(None, 1000, "auto", [real, fake, _cpu_node()], workers_per_gpu=2)
    plans = _by_id(layout)
    assert layout.trainer_node == "real"  # the trainer is expected on a GPU torch can use
    assert plans["real"].device == "cuda" and plans["real"].workers == 2
    assert plans["fake"].device == "cpu" and plans["fake"].workers == 8 and plans["fake"].worker_gpus == 0
    assert len(layout.notes) == 1 and "10.0.0.9" in layout.notes[0] and "CPU-only build" in layout.notes[0]
    assert "--device cuda makes this an error" in layout.notes[0]


def test_device_cuda_on_a_gpu_torch_cannot_use_is_one_line_naming_the_node():
    with pytest.raises(RunError) as err:
        plan_layout(None, 100, "cuda", [_gpu_node(ip="10.0.0.7", cuda=False), _cpu_node()])
    msg = str(err.value)
    assert "\n" not in msg and "node 10.0.0.7" in msg and "CPU-only build" in msg and "--device cpu" in msg
    with pytest.raises(ConfigError, match="no GPU"):
        plan_layout(None, 100, "cuda", [_cpu_node()])


def test_device_cpu_requests_no_gpu_at_all():
    nodes = [_gpu_node(), _cpu_node()]
    layout = plan_layout(None, 1000, "cpu", nodes)
    assert layout.trainer_bundle == {"CPU": 1.0} and not layout.gpu and layout.workers_per_gpu is None
    assert all(p.worker_gpus == 0 and p.device == "cpu" for p in layout.nodes)
    assert sum(p.workers for p in layout.nodes) == 24  # one per core, the GPU node's included
    _check_fits(layout, nodes)


def test_unknown_cuda_under_auto_keeps_cpu_workers():
    """A GPU node whose probe did not answer (cuda None) is not trusted under auto."""
    layout = plan_layout(None, 1000, "auto", [NodeInfo("g", "10.0.0.5", 4, 2), _cpu_node()], workers_per_gpu=2)
    assert all(p.device == "cpu" for p in layout.nodes) and "not probed" in layout.notes[0]


def test_default_workers_per_gpu_from_memory_model_and_cpus():
    assert default_workers_per_gpu(None, CNN_PARAMS) == 4 and default_workers_per_gpu(A10G, None) == 4
    assert default_workers_per_gpu(A10G, CNN_PARAMS) == 8  # plenty of memory: the ceiling
    assert default_workers_per_gpu(4 * GB, CNN_PARAMS) == 3  # a small GPU
    assert default_workers_per_gpu(16 * GB, 50_000_000) == 1  # a model whose vmap chunk nearly fills it
    # default k is also at most one worker per CPU of the node: a g5.xlarge (4 vCPUs, 1 GPU) hosts 4
    layout = plan_layout(None, 1000, "auto", [_gpu_node("t", cpus=4, gpus=1), _gpu_node("g", cpus=4, gpus=1)],
                         model_params=CNN_PARAMS, trainer_node="t")
    assert _by_id(layout)["g"].workers == 4 and _by_id(layout)["g"].worker_gpus == 0.25


def test_requested_workers_fill_gpus_first_and_never_exceed_clients():
    nodes = [_gpu_node(), _cpu_node()]
    few = plan_layout(2, 1000, "auto", nodes, workers_per_gpu=4)
    assert [(p.workers, p.device, p.worker_gpus) for p in few.nodes] == [(2, "cuda", 0.5), (0, "cpu", 0.0)]
    more = plan_layout(10, 1000, "auto", nodes, workers_per_gpu=4)
    assert [(p.workers, p.device) for p in more.nodes] == [(4, "cuda"), (6, "cpu")]
    capped = plan_layout(None, 5, "auto", nodes, workers_per_gpu=4)
    assert capped.workers == 5 and _by_id(capped)["gpu"].workers == 4
    only_gpu = plan_layout(9, 1000, "auto", [_gpu_node(cpus=8)], workers_per_gpu=4)  # no CPU node: all on the GPU
    assert only_gpu.workers == 9 and only_gpu.nodes[0].worker_gpus == pytest.approx(1 / 9, abs=1e-4)
    _check_fits(only_gpu, [_gpu_node(cpus=8)])


def test_session_cluster_shape_keeps_the_old_cpu_layout():
    """Head 2 CPUs, a 1-CPU node with a GPU torch cannot use (the trainer's), a 1-CPU node: CPU workers spread."""
    nodes = [NodeInfo("h", "1.2.3.4", 2), NodeInfo("g", "1.2.3.4", 1, 1, cuda=False, note="no CUDA device"),
             NodeInfo("c", "1.2.3.4", 1)]
    layout = plan_layout(2, 20, "auto", nodes)
    assert layout.trainer_node == "g" and layout.trainer_bundle == {"CPU": 1.0, "GPU": 1.0}
    assert [p.workers for p in layout.nodes] == [1, 0, 1] and layout.worker_cpus == 1.0
    assert "mask trainer holds a GPU there" in layout.notes[0]
    assert plan_layout(None, 20, "auto", nodes).workers == 3  # one per free core


# ----- on the session cluster (fake GPU) -----------------------------------------------------------
def _node_ip(node_id: str) -> str:
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)


def test_device_auto_on_a_fake_gpu_trainer_on_gpu_node_workers_on_cpu(ray_cluster):
    _, gpu_node = ray_cluster
    layout, pg = setup_layout(None, 20, "auto", model_params=CNN_PARAMS)
    try:
        assert trainer_node_of(pg) == gpu_node == layout.trainer_node
        assert layout.trainer_bundle == {"CPU": 1.0, "GPU": 1.0}
        plans = _by_id(layout)
        assert plans[gpu_node].cuda is False and plans[gpu_node].workers == 0  # its only CPU is the trainer's
        assert all(p.device == "cpu" and p.worker_gpus == 0 for p in layout.nodes)
        assert layout.workers == 3 and layout.notes and _node_ip(gpu_node) in layout.notes[0]
    finally:
        remove_placement_group(pg)


def test_device_cuda_on_a_fake_gpu_stops_with_one_line_naming_the_node(ray_cluster, tmp_path, monkeypatch):
    cluster, gpu_node = ray_cluster
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # joined cluster: the driver's own CUDA is not the question
    cfg = build_config(overrides={"data": {"dataset": "digits", "root_size": 30}, "model": "mlp", "clients": 6,
                                  "rounds": 1, "defense": "fedavg", "device": "cuda", "workers": 2})
    with pytest.raises(RunError) as err:
        Simulation(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "\n" not in msg and f"node {_node_ip(gpu_node)}" in msg and "cannot use CUDA" in msg
    deadline = time.monotonic() + 30  # Ray's resource view catches up with released reservations
    while ray.available_resources().get("GPU", 0) != 1.0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("GPU", 0) == 1.0  # nothing reserved is left behind


def test_pool_start_refuses_a_gpu_worker_without_cuda(ray_cluster):
    """A worker Ray gives a GPU to must compute there: no silent CPU fallback; the pool's start-up says where."""
    _, gpu_node = ray_cluster
    ip = _node_ip(gpu_node)
    plan = NodePlan(gpu_node, ip, 1, 1, True, "", None, False, 1, "cuda", 0.1, 0.5, 8.0)
    layout = Layout(1, 0.1, {"CPU": 1.0, "GPU": 1.0}, True, [plan], None, "auto", 2)
    cfg = build_config(overrides={"data": {"dataset": "synthetic", "synthetic_train": 64}, "model": "mlp",
                                  "clients": 4})
    x = np.zeros((64, 1, 28, 28), dtype=np.float32)
    y = np.zeros(64, dtype=np.int64)
    parts = [np.arange(i * 16, (i + 1) * 16) for i in range(4)]
    with pytest.raises(RunError) as err:
        ClientPool(cfg, x, y, parts, [False] * 4, 10, 100, layout)
    msg = str(err.value)
    assert "\n" not in msg and f"client worker on node {ip}" in msg and "--device cpu" in msg
    deadline = time.monotonic() + 30
    while ray.available_resources().get("GPU", 0) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == 1.0  # the refused worker was killed (asynchronously)


def test_weighted_layout_trains_the_same_updates(ray_cluster):
    """Clients shared by weight (as between GPU and CPU workers) give the same updates as an even split."""
    cfg = build_config(overrides={"data": {"dataset": "digits"}, "model": "mlp", "clients": 12,
                                  "train": {"batch_size": 16, "grad_clip": None}})
    rng = np.random.default_rng(0)
    x = rng.random((240, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 240)
    parts = [np.arange(i * 20, (i + 1) * 20) for i in range(12)]
    from skymask_ray.models import ParamSpec, build_model

    spec = ParamSpec.of(build_model("mlp", (1, 8, 8), 10, 0))
    w = spec.flatten(build_model("mlp", (1, 8, 8), 10, 0))
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    head = next(iter(nodes))
    plans = [NodePlan(head, nodes[head], 2, 0, None, "", None, False, 1, "cpu", 0.5, 0.0, 3.0),
             NodePlan(head, nodes[head], 2, 0, None, "", None, False, 1, "cpu", 0.5, 0.0, 1.0)]
    weighted = ClientPool(cfg, x, y, parts, [False] * 12, 10, spec.numel, Layout(2, 0.5, {"CPU": 1.0}, False, plans))
    even = ClientPool(cfg, x, y, parts, [False] * 12, 10, spec.numel, 2, 0.5)
    try:
        assert [len(a) for a in weighted.assignment] == [9, 3]  # 3:1 by weight
        ids = list(range(12))
        assert torch.equal(weighted.train(w, {}, 1, ids).updates, even.train(w, {}, 1, ids).updates)
    finally:
        weighted.shutdown()
        even.shutdown()


@pytest.mark.slow
def test_vmap_run_rows_match_the_sequential_run_and_layout_is_stored(ray_cluster, tmp_path):
    """GPU workers train with the vmap path; a CPU-only run trains sequentially: same rows (to float tolerance).

    Both run here on CPU (no real GPU): the paths are what differs between a GPU-worker run and a CPU one.
    """
    base = {"data": {"dataset": "digits", "root_size": 40}, "model": "mlp", "clients": 12, "rounds": 2,
            "malicious_fraction": 0.25, "attack": "lie", "defense": "fltrust", "workers": 2,
            "train": {"batch_size": 16, "grad_clip": None, "local_lr": 0.5}}
    seq = pq.read_table(run_experiment(build_config(overrides={**base, "train": {**base["train"],
                                                               "client_exec": "sequential"}}),
                                       tmp_path / "seq")).to_pylist()
    vm = pq.read_table(run_experiment(build_config(overrides={**base, "train": {**base["train"],
                                                              "client_exec": "vmap"}}),
                                      tmp_path / "vmap")).to_pylist()
    for a, b in zip(seq, vm, strict=True):
        assert [a[k] for k in ("round", "tp", "fp", "tn", "fn", "accepted")] == \
               [b[k] for k in ("round", "tp", "fp", "tn", "fn", "accepted")]
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-3)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    doc = json.loads((tmp_path / "vmap" / "_state" / "layout.json").read_text())
    assert doc["from_round"] == 1 and doc["workers"] == 2 and doc["device"] == "auto"
    assert sum(n["workers"] for n in doc["nodes"]) == 2 and doc["trainer"]["bundle"]["GPU"] == 1.0
    kernels = doc["kernels"]
    assert kernels["client_training"] == "vmap" and "mask_step" not in kernels and "gram" not in kernels  # fltrust
    assert kernels["numpy_hugepages"].startswith(("numpy_hugepages=plain", "numpy_hugepages=madvise"))
    assert sorted(p.name for p in (tmp_path / "vmap").iterdir() if not p.name.startswith("_")) == ["rounds.parquet"]


def test_gpu_check_without_a_gpu_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: benchmarks/gpu_check.py would run for real")
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0
    assert len(out.stdout.strip().splitlines()) == 1 and "no CUDA GPU" in out.stdout
