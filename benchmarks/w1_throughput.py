"""Client-training throughput on workload W1: skymask-ray vs Flower vs a bare loop, against the compute ceiling.

W1: Fashion-MNIST, the paper's cnn (139,960 parameters), 100 IID clients of
600 samples, 1 local epoch of plain SGD (lr 0.05, batch 32), FedAvg, no
attack, 2 rounds. The metric is client updates per second:

* skymask-ray: in-process ``run_experiment`` (Ray, one client worker per core,
  one torch thread each, ``client_exec="sequential"``); rate = clients / mean
  of the per-round ``t_clients`` column of ``rounds.parquet`` (broadcast of the
  global weights, local training on every worker, gathering the N x P updates;
  set-up, aggregation and evaluation are outside it).
* Flower: ``benchmarks/flower_w1.py`` in its own virtual environment
  (``benchmarks/.flower-venv``, created here on first use); rate = fit updates
  / seconds from round 1's ``configure_fit`` to round R's end of
  ``aggregate_fit``, after a warm-up that has started every actor.
* bare: one process, no framework, 2 torch threads (by default), the same data
  and training code as the Flower clients; rate = clients / mean seconds of a
  round's loop over the clients (set weights, local SGD, read weights, add to
  the weighted sum).

First steps cost extra (torch's lazy imports of the training path, oneDNN
kernel set-up for each batch shape). skymask-ray's workers take one
throw-away step when they start (part of the product's set-up, outside the
timing); Flower's actors and the bare loop pay it inside round 1. With only 2
rounds that matters, so the steady-state rate over rounds >= 2 is reported
beside the all-rounds rate.

skymask-ray's clients train on the module itself with channels-last conv
weights (~1.5x per thread over a functional call on flat views, and over the
plain module); Flower's and the bare loop's clients use the plain module, as a
user of those would.

The compute ceiling is derived, not assumed: FLOPs of the cnn's forward and
backward per sample are counted from the layer shapes (convolutions and
linear layers only), and this machine's fp32 GEMM rate is measured with
``torch.mm``; ceiling = GEMM FLOP/s / FLOPs per client update.

Usage (the full W1 run; everything, the Flower venv included, from one command)::

    python -m benchmarks.w1_throughput

Small validation run: ``--clients 6 --samples 60 --rounds 1``. ``--skip-flower``
leaves Flower (and its venv) out. Writes ``benchmarks/results/w1_throughput.md``
and ``.json`` (``--results-dir`` to change).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from benchmarks.common import BENCH, ROOT, RESULTS, invocation, module_argv, script, write_result
from benchmarks.flower_w1 import (  # shared with the Flower script
    INPUT_SHAPE,
    W1Settings,
    build_cnn,
    client_generator,
    get_weights,
    iid_shards,
    load_train,
    local_sgd,
    read_idx,
    set_weights,
)

VENV = BENCH / ".flower-venv"
FLOWER_SPEC = "flwr[simulation]==1.41.*"
ROOT_SIZE = 100
BUSY_LOAD = 0.25  # 1-min load average per CPU at the start above which the report warns
REFERENCE = {"flower": 2.44, "bare": 6.96}  # updates/s measured earlier on this machine (the figures)


# ----- Flower's virtual environment ------------------------------------------------------------
def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _flwr_version() -> str | None:
    """Flower's version inside the venv, or None when the venv is missing or cannot import it."""
    if not _venv_python().exists():
        return None
    res = subprocess.run([str(_venv_python()), "-c", "import flwr; print(flwr.__version__)"],
                         capture_output=True, text=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    return res.stdout.strip() if res.returncode == 0 else None


def ensure_flower_venv(spec: str = FLOWER_SPEC) -> str:
    """Create ``benchmarks/.flower-venv`` (reusing this interpreter's torch) and install Flower; idempotent.

    Flower is not a dependency of skymask-ray, so it lives in its own venv; it may
    install its own Ray there, shadowing the system one only inside the venv.
    """
    version = _flwr_version()
    if version is not None:
        return version
    if not _venv_python().exists():
        print(f"creating {VENV} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    print(f"installing {spec!r} into {VENV} ...", file=sys.stderr, flush=True)
    subprocess.run([str(_venv_python()), "-m", "pip", "install", spec], check=True)
    version = _flwr_version()
    if version is None:
        raise RuntimeError(f"{VENV} still cannot import flwr after installing {spec!r}")
    return version


# ----- FLOPs and the compute ceiling -------------------------------------------------------------
def train_flops_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one sample's forward and backward through convs and linears.

    Forward: each layer's multiply-adds, from its output shape. Backward: the weight
    gradient costs as much as the forward again; the input gradient too, except for
    the first layer, whose input (the image) needs none. Biases, activations, pooling,
    the loss and the SGD update are elementwise and left out (well under 1 %).
    """
    macs: list[int] = []

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            per_out = mod.in_features
        macs.append(out[0].numel() * per_out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    fwd = float(sum(macs))
    bwd = fwd + (fwd - macs[0])
    return {"forward_flops": 2 * fwd, "backward_flops": 2 * bwd, "train_flops": 2 * (fwd + bwd)}


def sgemm_gflops(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` fp32 ``torch.mm`` rate (GFLOP/s) for n x n matrices with ``threads`` threads."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


# ----- the three measurements ------------------------------------------------------------------
def _rates(clients: int, t_clients: list[float]) -> tuple[float, float | None]:
    """(all rounds, rounds >= 2) rates = clients / mean seconds per round."""
    steady = clients / statistics.mean(t_clients[1:]) if len(t_clients) > 1 else None
    return clients / statistics.mean(t_clients), steady


def run_skymask(s: W1Settings) -> dict[str, Any]:
    """W1 in skymask-ray, in this process; rate from the ``t_clients`` column of rounds.parquet."""
    import pyarrow.parquet as pq
    import ray

    import skymask_ray
    from skymask_ray.experiment import build_config
    from skymask_ray.simulation import run_experiment

    overrides = {
        "data": {"dataset": "fmnist", "partition": "iid", "samples_per_client": s.samples, "root_size": ROOT_SIZE},
        "model": "cnn", "clients": s.clients, "malicious_fraction": 0.0, "attack": "none", "defense": "fedavg",
        "rounds": s.rounds, "seed": s.seed,
        "train": {"local_lr": s.lr, "batch_size": s.batch_size, "local_epochs": s.epochs, "grad_clip": None,
                  "client_exec": "sequential"},
    }
    cfg = build_config(overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="w1-skymask-") as tmp:
        t0 = time.perf_counter()
        path = run_experiment(cfg, tmp)
        total = time.perf_counter() - t0
        rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["round"])
    t_clients = [float(r["t_clients"]) for r in rows]
    trained = [int(r["trained_clients"]) for r in rows]
    rate, steady = _rates(s.clients, t_clients)
    n_train = len(read_idx(Path(s.data_dir) / "train-labels-idx1-ubyte.gz"))
    shard = [min(len(p), s.samples) for p in np.array_split(np.arange(n_train - ROOT_SIZE), s.clients)]
    return {
        "framework": "skymask-ray", "version": skymask_ray.__version__, "ray_version": ray.__version__,
        "clients": s.clients, "rounds": s.rounds, "samples_per_client": [min(shard), max(shard)],
        "updates": sum(trained), "seconds": sum(t_clients), "updates_per_s": rate, "steady_updates_per_s": steady,
        "t_clients": t_clients, "t_round": [float(r["t_round"]) for r in rows],
        "accuracy": [r["accuracy"] for r in rows], "total_wall_seconds": total, "overrides": overrides,
    }


def run_bare(s: W1Settings, threads: int) -> dict[str, Any]:
    """W1 with no framework: one process, ``threads`` torch threads, clients one after another.

    Also measures this machine's GEMM rate with the same thread count, before training.
    """
    gflops = sgemm_gflops(threads)
    torch.set_num_threads(threads)
    x, y = load_train(s.data_dir)
    shards = [torch.from_numpy(p) for p in iid_shards(len(y), s.clients, s.samples, s.seed)]
    model = build_cnn(s.seed)
    global_w = get_weights(model)
    t_clients: list[float] = []
    for r in range(1, s.rounds + 1):
        t0 = time.perf_counter()
        acc = [np.zeros_like(w) for w in global_w]
        total = 0
        for k, idx in enumerate(shards):
            xk, yk = x[idx], y[idx]
            set_weights(model, global_w)
            local_sgd(model, xk, yk, s, client_generator(s.seed, r, k))
            for a, w in zip(acc, get_weights(model), strict=True):
                a += len(yk) * w
            total += len(yk)
        t_clients.append(time.perf_counter() - t0)
        global_w = [a / total for a in acc]
    rate, steady = _rates(s.clients, t_clients)
    return {
        "framework": "bare", "version": f"torch {torch.__version__}", "threads": threads,
        "clients": s.clients, "rounds": s.rounds, "samples_per_client": [s.samples, s.samples],
        "updates": s.clients * s.rounds, "seconds": sum(t_clients), "updates_per_s": rate,
        "steady_updates_per_s": steady, "t_clients": t_clients, "sgemm_gflops": gflops,
    }


def run_flower(s: W1Settings) -> dict[str, Any]:
    """W1 in Flower: ``benchmarks.flower_w1`` under the venv's interpreter; its last JSON line on stdout."""
    cmd = [*module_argv("flower_w1", _venv_python()), "--clients", str(s.clients), "--samples", str(s.samples),
           "--rounds", str(s.rounds), "--seed", str(s.seed), "--data-dir", s.data_dir]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"flower_w1.py failed (exit {res.returncode}); its log is above")
    out = json.loads(lines[-1])
    rounds = out["per_round"]
    later = rounds[1:]
    out["steady_updates_per_s"] = (sum(r["updates"] for r in later) / sum(r["round_s"] for r in later)
                                   if later else None)
    return out


# ----- report ----------------------------------------------------------------------------------
TIMED = {
    "skymask-ray": "per-round `t_clients`: broadcast, local training on all workers, gathering N x P updates",
    "flower": "round 1 `configure_fit` to round R end of `aggregate_fit`, once every actor has started and loaded data",
    "bare": "per-round loop over clients: set weights, local SGD, read weights, weighted sum",
}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report(res: dict[str, Any]) -> str:
    """The Markdown report: one row per framework, then the ratio, the ceiling and the caveats."""
    per_update = res["flops"]["train_flops_per_update"]
    ceiling = res["ceiling_updates_per_s"]
    w, m, f = res["workload"], res["machine"], res["flops"]
    sky = res["results"]["skymask-ray"]
    flower_ray = res["results"].get("flower", {}).get("ray_version", "-")
    lines = [f"# W1 client-training throughput (`{invocation(__file__)}`)", ""]
    if m["loadavg_start"] > BUSY_LOAD * m["cpus"]:
        lines += [f"**Warning: the machine was busy at the start (1-min load average {m['loadavg_start']:.2f} on "
                  f"{m['cpus']} CPUs); these figures are not representative.**", ""]
    lines += [
        f"Fashion-MNIST, cnn ({w['params']:,} parameters), {w['clients']} IID clients x {w['samples']} samples, "
        f"{w['epochs']} local epoch, batch {w['batch_size']}, SGD lr {w['lr']}, FedAvg, no attack, "
        f"{w['rounds']} rounds. Machine: {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}; "
        f"1-min load average at start {m['loadavg_start']:.2f}.",
        "",
        "| framework | version | updates | seconds | updates/s | updates/s, rounds >= 2 | useful GFLOP/s "
        "| % of ceiling | what is timed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in ("skymask-ray", "flower", "bare"):
        r = res["results"].get(key)
        if r is None:
            continue
        rate = r["updates_per_s"]
        lines.append(
            f"| {key} | {r['version']} | {r['updates']} | {r['seconds']:.1f} | {rate:.2f} | "
            f"{_fmt(r.get('steady_updates_per_s'))} | {rate * per_update / 1e9:.1f} | {100 * rate / ceiling:.1f} | "
            f"{TIMED[key]} |"
        )
    lines.append("")
    if res.get("ratio_skymask_over_flower") is not None:
        steady = res.get("steady_ratio_skymask_over_flower")
        lines += [f"skymask-ray / Flower = **{res['ratio_skymask_over_flower']:.2f}x** (all rounds)"
                  + (f", {steady:.2f}x (rounds >= 2)" if steady else "") + ".", ""]
    lines += [
        f"Compute ceiling: {f['train_flops_per_sample'] / 1e6:.2f} MFLOP per sample (forward "
        f"{f['forward_flops_per_sample'] / 1e6:.2f}, backward {f['backward_flops_per_sample'] / 1e6:.2f}; "
        f"convs and linears) x {w['samples']} samples = {per_update / 1e9:.2f} GFLOP per update; measured fp32 "
        f"GEMM {res['sgemm_gflops']:.0f} GFLOP/s ({m['gemm_threads']} threads) -> **{ceiling:.1f} updates/s**. "
        f"skymask-ray reaches **{100 * sky['updates_per_s'] / ceiling:.1f} %** of it.",
        "",
        f"Earlier reference figures on this machine (from the issue): Flower {REFERENCE['flower']} updates/s, "
        f"bare loop {REFERENCE['bare']} updates/s.",
        "",
        "Notes: first steps cost extra (lazy imports, kernel set-up per batch shape); skymask-ray's workers "
        "take one throw-away step at start-up (outside the timing), Flower's actors and the bare loop pay it "
        "in round 1; the rounds >= 2 column excludes it. skymask-ray's clients train with channels-last conv "
        "weights; Flower's and the bare loop's use the plain module. "
        f"skymask-ray takes a {w['root_size']}-sample root set "
        f"from the training set first, so its clients hold {sky['samples_per_client'][0]}-"
        f"{sky['samples_per_client'][1]} samples (Flower and bare: exactly {w['samples']}). Flower runs with Ray "
        f"{flower_ray} from its venv, skymask-ray with Ray {sky['ray_version']}; each starts its own local Ray "
        "instance.",
    ]
    return "\n".join(lines) + "\n"


@script(__doc__)
@click.option("--clients", type=int, default=100)
@click.option("--samples", type=int, default=600, help="Samples per client.")
@click.option("--rounds", type=int, default=2)
@click.option("--seed", type=int, default=0)
@click.option("--bare-threads", type=int, default=2, help="Torch threads of the bare loop and the GEMM timing.")
@click.option("--skip-flower", is_flag=True, help="Leave Flower (and its venv) out.")
@click.option("--flower-spec", default=FLOWER_SPEC, help="Pip requirement installed into the Flower venv.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS)
def main(clients: int, samples: int, rounds: int, seed: int, bare_threads: int, skip_flower: bool, flower_spec: str,
         results_dir: Path) -> None:
    """Run the three measurements and write the report."""
    s = W1Settings(clients=clients, samples=samples, rounds=rounds, seed=seed)
    load_start = os.getloadavg()[0]
    flower_version = None if skip_flower else ensure_flower_venv(flower_spec)

    results: dict[str, dict[str, Any]] = {}
    print("skymask-ray ...", file=sys.stderr, flush=True)
    results["skymask-ray"] = run_skymask(s)
    if flower_version is not None:
        print(f"Flower {flower_version} ...", file=sys.stderr, flush=True)
        results["flower"] = run_flower(s)
    print("bare loop ...", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        results["bare"] = pool.submit(run_bare, s, bare_threads).result()

    model = build_cnn(s.seed)
    flops = train_flops_per_sample(model, INPUT_SHAPE)
    per_update = flops["train_flops"] * s.samples * s.epochs
    gemm = results["bare"]["sgemm_gflops"]
    ceiling = gemm * 1e9 / per_update
    sky, fl = results["skymask-ray"], results.get("flower")
    res = {
        "workload": {**asdict(s), "params": sum(p.numel() for p in model.parameters()), "root_size": ROOT_SIZE},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "gemm_threads": bare_threads, "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()[0]},
        "flops": {"forward_flops_per_sample": flops["forward_flops"],
                  "backward_flops_per_sample": flops["backward_flops"],
                  "train_flops_per_sample": flops["train_flops"], "train_flops_per_update": per_update},
        "sgemm_gflops": gemm,
        "ceiling_updates_per_s": ceiling,
        "results": results,
        "ratio_skymask_over_flower": sky["updates_per_s"] / fl["updates_per_s"] if fl else None,
        "steady_ratio_skymask_over_flower": (sky["steady_updates_per_s"] / fl["steady_updates_per_s"]
                                             if fl and sky["steady_updates_per_s"] and fl["steady_updates_per_s"]
                                             else None),
        "skymask_fraction_of_ceiling": sky["updates_per_s"] / ceiling,
        "reference_updates_per_s": REFERENCE,
    }
    md = report(res)
    write_result(results_dir / "w1_throughput.md", md)
    write_result(results_dir / "w1_throughput.json", json.dumps(res, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
