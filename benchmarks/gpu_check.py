"""GPU client workers (issue #18): W1 client updates/s, one N = 500 SkyMask round, GPU memory.

Needs a machine with a CUDA GPU; without one it says so in one line and exits 0 (nothing measured).

* **W1 with GPU client workers**: Fashion-MNIST, the paper's cnn (P = 139,960), ``--clients`` IID
  clients of ``--samples`` samples, 1 local epoch of plain SGD (lr 0.05, batch 32), FedAvg applied
  between rounds. The clients train on a :class:`~skymask_ray.clients.pool.ClientPool` of k workers
  per GPU (``--workers-per-gpu``, default :func:`~skymask_ray.layout.default_workers_per_gpu`, at
  most one per CPU), each holding 1/k of a GPU and its clients' data on it, training with the vmap
  path (``client_exec: auto``). Every GPU of the machine hosts client workers (FedAvg needs no mask
  trainer). Rate = clients / seconds of ``pool.train`` per round (all rounds; rounds >= 2).
* **CPU reference**: one CPU worker (one torch thread, sequential path) on ``--cpu-clients`` of the
  same clients; ``GPU rate per GPU / CPU rate per worker`` is what
  :data:`skymask_ray.layout.GPU_WORKER_WEIGHT` (clients shared between the kinds) estimates.
* **One N = 500 SkyMask round**: the round's client training on the GPU workers (``--skymask-clients``
  clients of ``--skymask-samples`` samples), then SkyMask's mask step (g_0, 20-epoch mask training,
  clustering) on the GPU in this process with the stacked updates: its time and
  ``torch.cuda.max_memory_allocated``. (On a one-GPU machine the run's own layout keeps that GPU for
  the trainer and trains clients on CPUs, so the two parts run here one after the other.)
* **GPU memory**: ``torch.cuda.max_memory_allocated`` of every client worker and of the mask step.

    python -m benchmarks.gpu_check [--clients 100] [--rounds 3] [--skymask-clients 500] [--workers-per-gpu K]

Writes ``benchmarks/results/gpu_check.md`` and ``.json`` when it measured something.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import torch

from skymask_ray.markdown import markdown_table

from benchmarks.common import command_line, results_path, script, write_result
from benchmarks.flower_w1 import DATA_DIR, iid_shards, load_train

ROOT_SIZE = 100


def _no_gpu_line() -> str | None:
    """One line if this machine cannot run the check, else None."""
    from skymask_ray.nodes import cuda_status

    ok, why = cuda_status()
    return None if ok else f"gpu_check: no CUDA GPU on this machine ({why}); nothing measured"


def _gpu_layout(k: int | None, model_params: int, vmap_chunk: int, clients: int):
    """k client workers per GPU on this machine's node, every GPU used (no trainer bundle)."""
    from skymask_ray.layout import GPU_WORKER_WEIGHT, Layout, NodePlan, default_workers_per_gpu
    from skymask_ray.nodes import cluster_nodes, probe_gpus

    node = next(n for n in probe_gpus(cluster_nodes()) if n.gpus >= 1)
    gpus = int(node.gpus)
    k = k or min(default_workers_per_gpu(node.gpu_memory, model_params, vmap_chunk), max(1, int(node.cpus // gpus)))
    n = min(clients, k * gpus)
    share = min(1.0, gpus / n)
    plan = NodePlan(node.node_id, node.ip, node.cpus, node.gpus, True, node.gpu_name, node.gpu_memory, False, n,
                    "cuda", min(1.0, int(node.cpus / n * 100) / 100), int(share * 10**4) / 10**4,
                    GPU_WORKER_WEIGHT * share)
    return Layout(n, plan.worker_cpus, {}, False, [plan], None, "cuda", k), node


def _cfg(clients: int, device: str, exec_: str = "auto"):
    from skymask_ray.experiment import build_config

    return build_config(overrides={
        "data": {"dataset": "fmnist", "partition": "iid", "root_size": ROOT_SIZE}, "model": "cnn", "clients": clients,
        "malicious_fraction": 0.0, "attack": "none", "defense": "fedavg", "device": device,
        "train": {"local_lr": 0.05, "batch_size": 32, "local_epochs": 1, "grad_clip": None, "client_exec": exec_}})


def _worker_peak_mb(pool) -> list[float]:
    import ray

    return [m / 1024**2 for m in ray.get([w.__ray_call__.remote(lambda self: torch.cuda.max_memory_allocated())
                                          for w in pool.workers])]


def _train_rounds(pool, w: torch.Tensor, ids: list[int], rounds: int) -> tuple[list[float], torch.Tensor]:
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        upd = pool.train(w, {}, r, ids).updates
        times.append(time.perf_counter() - t0)
        w = w - upd.mean(0)
    return times, upd


@script(__doc__)
@click.option("--clients", type=int, default=100, help="W1 clients.")
@click.option("--samples", type=int, default=600, help="W1 samples per client.")
@click.option("--rounds", type=int, default=3, help="W1 rounds.")
@click.option("--cpu-clients", type=int, default=20, help="Clients of the one-CPU-worker reference (0: skip).")
@click.option("--skymask-clients", type=int, default=500)
@click.option("--skymask-samples", type=int, default=100, help="Samples per client of the SkyMask round.")
@click.option("--workers-per-gpu", type=int, default=None)
@click.option("--data-dir", default=DATA_DIR)
def main(**options: Any) -> None:
    a = SimpleNamespace(**options)

    line = _no_gpu_line()
    if line is not None:
        print(line)
        return

    import ray

    from skymask_ray.clients.pool import ClientPool
    from skymask_ray.clients.training import SGDSettings, num_steps
    from skymask_ray.config import SkyMaskConfig
    from skymask_ray.models import ParamSpec, build_model
    from skymask_ray.ray_session import init_ray
    from skymask_ray.skymask.trainer import MaskTrainer, stack_updates

    x_t, y_t = load_train(a.data_dir)
    x, y = x_t.numpy(), y_t.numpy()
    model = build_model("cnn", (1, 28, 28), 10, 0)
    spec = ParamSpec.of(model)
    w0 = spec.flatten(model)
    init_ray()
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                           "torch": torch.__version__, "cuda": torch.version.cuda, "ray": ray.__version__}

    # W1 on GPU workers
    shards = iid_shards(len(y) - ROOT_SIZE, a.clients, a.samples, 0)
    layout, node = _gpu_layout(a.workers_per_gpu, spec.numel, 32, a.clients)
    pool = ClientPool(_cfg(a.clients, "cuda"), x, y, shards, [False] * a.clients, 10, spec.numel, layout)
    try:
        times, _ = _train_rounds(pool, w0, list(range(a.clients)), a.rounds)
        w1_mem = _worker_peak_mb(pool)
    finally:
        pool.shutdown()
    steady = a.clients / statistics.mean(times[1:]) if len(times) > 1 else None
    out["w1"] = {"layout": layout.summary(), "workers_per_gpu": layout.workers_per_gpu, "clients": a.clients,
                 "samples": a.samples, "round_seconds": times, "updates_per_s": a.clients / statistics.mean(times),
                 "steady_updates_per_s": steady, "worker_peak_gpu_mb": w1_mem}

    # one CPU worker on some of the same clients: what a GPU is worth in CPU workers
    if a.cpu_clients:
        n = min(a.cpu_clients, a.clients)
        cpu_pool = ClientPool(_cfg(n, "cpu"), x, y, shards[:n], [False] * n, 10, spec.numel, 1, 1.0)
        try:
            t_cpu, _ = _train_rounds(cpu_pool, w0, list(range(n)), 1)
        finally:
            cpu_pool.shutdown()
        per_cpu = n / t_cpu[0]
        per_gpu = (steady or out["w1"]["updates_per_s"]) / max(1, int(node.gpus))
        out["cpu_reference"] = {"clients": n, "updates_per_s_one_worker": per_cpu,
                                "gpu_worth_cpu_workers": per_gpu / per_cpu}

    # one N = 500 SkyMask round: the clients on the GPU workers, then the mask step on the GPU
    n = a.skymask_clients
    shards = iid_shards(len(y) - ROOT_SIZE, n, a.skymask_samples, 1)
    root = np.arange(len(y) - ROOT_SIZE, len(y))
    layout, _ = _gpu_layout(a.workers_per_gpu, spec.numel, 32, n)
    pool = ClientPool(_cfg(n, "cuda"), x, y, shards, [False] * n, 10, spec.numel, layout)
    try:
        t_clients, updates = _train_rounds(pool, w0, list(range(n)), 1)
        sky_worker_mem = _worker_peak_mb(pool)
    finally:
        pool.shutdown()
    trainer = MaskTrainer("cnn", (1, 28, 28), 10, x[root], y[root], SkyMaskConfig(), "cuda")
    t0 = time.perf_counter()
    trainer.prepare_kernels(n + 1)
    t_compile = time.perf_counter() - t0
    s = SGDSettings(lr=0.05, batch_size=32, steps=num_steps(a.skymask_samples, SGDSettings(lr=0.05, batch_size=32)))
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    g0, _ = trainer.server_update(w0.numpy(), {}, s, 0, 1)
    stacked = stack_updates(updates, torch.from_numpy(np.array(g0)))
    sel = trainer.select(w0.numpy(), {}, stacked.numpy(), 0, 1)
    torch.cuda.synchronize()
    t_mask = time.perf_counter() - t0
    out["skymask_round"] = {
        "clients": n, "samples": a.skymask_samples, "layout": layout.summary(), "t_clients": t_clients[0],
        "updates_per_s": n / t_clients[0], "worker_peak_gpu_mb": sky_worker_mem, "t_compile": t_compile,
        "t_mask_step": t_mask, "mask_epochs": len(sel.losses), "accepted": int(sel.accepted.sum()),
        "timings": {k: float(v) for k, v in sel.timings.items()},
        "mask_step_peak_gpu_mb": torch.cuda.max_memory_allocated() / 1024**2}
    ray.shutdown()

    w1, sky = out["w1"], out["skymask_round"]
    rows = [["W1 client updates/s (all rounds)", f"{w1['updates_per_s']:.1f}"],
            ["W1 client updates/s (rounds >= 2)", f"{steady:.1f}" if steady else "n/a"],
            ["W1 layout", w1["layout"]],
            ["W1 worker peak GPU memory (MB, max)", f"{max(w1['worker_peak_gpu_mb']):.0f}"],
            [f"SkyMask round: client updates/s (N = {n})", f"{sky['updates_per_s']:.1f}"],
            ["SkyMask round: mask step (s, g_0 + masks + clustering)", f"{sky['t_mask_step']:.2f}"],
            ["SkyMask round: mask step peak GPU memory (MB)", f"{sky['mask_step_peak_gpu_mb']:.0f}"],
            ["SkyMask round: worker peak GPU memory (MB, max)", f"{max(sky['worker_peak_gpu_mb']):.0f}"]]
    if "cpu_reference" in out:
        c = out["cpu_reference"]
        rows += [["one CPU worker: client updates/s", f"{c['updates_per_s_one_worker']:.1f}"],
                 ["one GPU = this many CPU workers (GPU_WORKER_WEIGHT)", f"{c['gpu_worth_cpu_workers']:.1f}"]]
    table = markdown_table(["measure", "value"], rows)
    text = (f"# GPU client workers\n\n`{command_line(__file__, sys.argv[1:])}` on {out['gpu']} x {out['gpus']} "
            f"(torch {out['torch']}, CUDA {out['cuda']}, Ray {out['ray']})\n\n{table}\n")
    print(text)
    write_result(results_path("gpu_check.md"), text)
    write_result(results_path("gpu_check.json"), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
