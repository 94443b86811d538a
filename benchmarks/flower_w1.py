"""Workload W1 in Flower's simulation engine (Ray backend), for a side-by-side throughput comparison.

W1: Fashion-MNIST, the paper's cnn (:class:`skymask_ray.models.CNN`, 139,960
parameters), N IID clients of S samples each, 1 local epoch of plain SGD
(lr 0.05, batch 32), FedAvg over every client, no evaluation, R rounds.

Flower is not a dependency of skymask-ray; run this from the repository root
with the interpreter of ``benchmarks/.flower-venv`` (``python -m
benchmarks.w1_throughput`` creates it and runs this as ``benchmarks/.flower-venv/bin/python
-m benchmarks.flower_w1``). It
uses ``flwr.simulation.run_simulation`` (deprecated since Flower 1.13 in
favour of ``flwr run``, still shipped in 1.41) with the Ray backend and
``client_resources = {"num_cpus": 1}`` (one actor, and one torch thread, per
CPU), a legacy ``NumPyClient`` and the legacy ``FedAvg`` strategy
(``fraction_fit=1.0``, ``fraction_evaluate=0.0``, no ``evaluate_fn``).

What is timed: ``seconds`` runs from the server's ``configure_fit`` of round 1
to the end of ``aggregate_fit`` of round R (all of Flower's message passing,
client instantiation, serialization, training and aggregation of the rounds).
Start-up is excluded: Ray's start, actor creation, and each actor's one-time
import, data load and model build happen before that, in a warm-up where the
server sends ``get_properties`` to every client until every actor of the pool
has answered (``startup_seconds``, reported separately). Like skymask-ray's
workers, each actor still pays torch's lazy imports of the training path
(torch._dynamo, sympy: ~900 modules, seconds) at its first training step, in
round 1; the driver reports rounds >= 2 separately for that reason.

This file also holds the framework-free pieces that ``w1_throughput``
shares for its bare single-process loop (data loading, IID shards, local
SGD), so both use literally the same data and training code. Flower itself is
imported lazily, inside the functions that need it, because the driver
imports this module with an interpreter that has no Flower.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skymask_ray.models import CNN

from benchmarks.common import script

DATA_DIR = "/usr/share/datasets/fashion-mnist"
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
WARMUP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class W1Settings:
    """Everything a W1 client needs; frozen and picklable so it can travel to Ray actors."""

    clients: int = 100
    samples: int = 600
    rounds: int = 2
    lr: float = 0.05
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0
    data_dir: str = DATA_DIR
    threads: int = 1


def read_idx(path: Path) -> np.ndarray:
    """Read one (gzipped) IDX file of the MNIST family into a uint8 array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_train(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training set as float32 NCHW in [0, 1] and int64 labels (as skymask-ray loads it)."""
    base = Path(data_dir)
    x = read_idx(base / "train-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
    y = read_idx(base / "train-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def iid_shards(total: int, clients: int, samples: int, seed: int) -> list[np.ndarray]:
    """Disjoint IID shards of exactly ``samples`` indices each, from one seeded permutation."""
    if clients * samples > total:
        raise ValueError(f"{clients} clients x {samples} samples exceed the {total} training samples")
    perm = np.random.default_rng(seed).permutation(total)
    return [np.sort(perm[k * samples : (k + 1) * samples]) for k in range(clients)]


def build_cnn(seed: int) -> nn.Module:
    """The paper's cnn, initialised from ``seed``."""
    torch.manual_seed(seed)
    return CNN(INPUT_SHAPE, NUM_CLASSES)


def client_generator(seed: int, round_idx: int, client: int) -> torch.Generator:
    """A per-(round, client) random stream for the mini-batch order."""
    return torch.Generator().manual_seed((seed * 1_000_003 + round_idx) * 1_000_003 + client)


def local_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: W1Settings, gen: torch.Generator) -> None:
    """Plain SGD (no momentum, no weight decay) on one client's shard, in place, ``s.epochs`` shuffled epochs."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=s.lr)
    for _ in range(s.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(s.batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as a list of numpy arrays (Flower's ``NDArrays``)."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load a list of numpy arrays (in ``state_dict`` order) into the model."""
    state = {k: torch.from_numpy(np.asarray(w)) for k, w in zip(model.state_dict().keys(), weights, strict=True)}
    model.load_state_dict(state, strict=True)


@dataclass
class ProcessState:
    """What one Flower actor process loads once and reuses for every client it hosts."""

    x: torch.Tensor
    y: torch.Tensor
    shards: list[np.ndarray]
    model: nn.Module


@functools.cache
def process_state(s: W1Settings) -> ProcessState:
    """Load data, shards and a model once per process (Flower creates a fresh client per message)."""
    torch.set_num_threads(s.threads)
    x, y = load_train(s.data_dir)
    return ProcessState(x, y, iid_shards(len(y), s.clients, s.samples, s.seed), build_cnn(s.seed))


@functools.cache
def _client_class() -> type:
    """The NumPyClient subclass, built on first use so importing this module needs no Flower."""
    from flwr.client import NumPyClient

    class W1Client(NumPyClient):
        """One virtual W1 client: local SGD on its IID shard from the global weights."""

        def __init__(self, cid: int, s: W1Settings) -> None:
            self.cid, self.s = cid, s

        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            """The warm-up probe: forces this process's one-time set-up; reports the actor's pid."""
            process_state(self.s)
            return {"pid": os.getpid()}

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return get_weights(process_state(self.s).model)

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            st = process_state(self.s)
            idx = torch.from_numpy(st.shards[self.cid])
            x, y = st.x[idx], st.y[idx]
            t0 = time.perf_counter()
            set_weights(st.model, parameters)
            local_sgd(st.model, x, y, self.s, client_generator(self.s.seed, int(config["server_round"]), self.cid))
            weights = get_weights(st.model)
            metrics = {"train_s": time.perf_counter() - t0, "cache_hits": process_state.cache_info().hits}
            return weights, len(y), metrics

    return W1Client


def client_fn(s: W1Settings, context: Any) -> Any:
    """Flower's client factory: the client of this supernode's partition id."""
    return _client_class()(int(context.node_config["partition-id"]), s).to_client()


@dataclass
class Timings:
    """What the server thread records; read by :func:`run_flower` after the simulation ends."""

    startup_end: float | None = None
    warmup_waves: int = 0
    actors: int = 0
    rounds_start: float | None = None
    rounds_end: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _sum_fit_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Round totals of the clients' own training time, and the largest per-process cache hit count.

    ``client_train_s`` (set weights, local SGD, get weights, inside the actor) against the round's
    wall time shows the framework's share; ``cache_hits_max`` > 0 proves actors kept their loaded
    data between messages, i.e. no client re-loaded the dataset inside the timed rounds.
    """
    return {"client_train_s": sum(float(m["train_s"]) for _, m in results),
            "cache_hits_max": max((int(m["cache_hits"]) for _, m in results), default=0)}


def _server_fn_factory(s: W1Settings, timings: Timings, num_cpus: float) -> Any:
    """The ServerApp's ``server_fn``: a timed FedAvg inside a server that warms every actor first."""
    from flwr.common import GetPropertiesIns, ndarrays_to_parameters
    from flwr.server import Server, ServerAppComponents, ServerConfig, SimpleClientManager
    from flwr.server.strategy import FedAvg
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    class TimedFedAvg(FedAvg):
        """FedAvg that stamps each round's fit (configure to last result) and whole round."""

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            self._t0 = time.perf_counter()
            if timings.rounds_start is None:
                timings.rounds_start = self._t0
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
            t_fit = time.perf_counter()
            out = super().aggregate_fit(server_round, results, failures)
            timings.rounds_end = time.perf_counter()
            timings.rounds.append({"round": server_round, "updates": len(results), "failures": len(failures),
                                   "fit_s": t_fit - self._t0, "round_s": timings.rounds_end - self._t0, **out[1]})
            return out

    class WarmServer(Server):
        """A legacy Server that, before round 1, probes clients until every actor of the pool has answered."""

        def fit(self, num_rounds: int, timeout: float | None) -> Any:
            import ray

            if not self.client_manager().wait_for(s.clients, timeout=int(WARMUP_TIMEOUT_S)):
                raise RuntimeError(f"only {self.client_manager().num_available()} of {s.clients} Flower nodes "
                                   "registered")
            proxies = list(self.client_manager().all().values())
            pids: set[int] = set()
            expected = s.clients
            deadline = time.perf_counter() + WARMUP_TIMEOUT_S
            while time.perf_counter() < deadline:
                with ThreadPoolExecutor(max_workers=self.max_workers) as ex:
                    res = list(ex.map(lambda p: p.get_properties(GetPropertiesIns({}), timeout, 0), proxies))
                pids.update(int(r.properties["pid"]) for r in res)
                timings.warmup_waves += 1
                # Clients have answered, so the engine's thread has started Ray: the pool size is known.
                expected = min(s.clients, pool_size_from_resources({"num_cpus": num_cpus, "num_gpus": 0.0}))
                if len(pids) >= expected:
                    break
            if len(pids) < expected:
                raise RuntimeError(f"only {len(pids)} of {expected} Flower actors answered within "
                                   f"{WARMUP_TIMEOUT_S:.0f}s; ray resources: {ray.cluster_resources()}")
            timings.actors = len(pids)
            timings.startup_end = time.perf_counter()
            return super().fit(num_rounds, timeout)

    def server_fn(context: Any) -> Any:
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0,
            min_fit_clients=s.clients, min_evaluate_clients=0, min_available_clients=s.clients,
            on_fit_config_fn=lambda r: {"server_round": r},
            fit_metrics_aggregation_fn=_sum_fit_metrics,
            initial_parameters=ndarrays_to_parameters(get_weights(build_cnn(s.seed))),
        )
        server = WarmServer(client_manager=SimpleClientManager(), strategy=strategy)
        return ServerAppComponents(server=server, config=ServerConfig(num_rounds=s.rounds))

    return server_fn


def run_flower(s: W1Settings, num_cpus: float = 1.0) -> dict[str, Any]:
    """Run W1 in Flower's Ray simulation; returns the result record (see the module docstring)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import flwr
    import ray
    from flwr.client import ClientApp
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    timings = Timings()
    backend_config = {
        "client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0},
        "init_args": {"address": "local"},  # a fresh Ray instance, never another one running on the machine
    }
    t_call = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=_server_fn_factory(s, timings, num_cpus)),
        client_app=ClientApp(client_fn=functools.partial(client_fn, s)),
        num_supernodes=s.clients,
        backend_name="ray",
        backend_config=backend_config,
    )
    total = time.perf_counter() - t_call
    if timings.rounds_start is None or timings.rounds_end is None or len(timings.rounds) != s.rounds:
        raise RuntimeError(f"Flower finished {len(timings.rounds)} of {s.rounds} rounds; see its log above")
    updates = sum(r["updates"] for r in timings.rounds)
    seconds = timings.rounds_end - timings.rounds_start
    return {
        "framework": "flower", "version": flwr.__version__, "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "clients": s.clients, "rounds": s.rounds, "samples_per_client": s.samples,
        "updates": updates, "failures": sum(r["failures"] for r in timings.rounds),
        "seconds": seconds, "updates_per_s": updates / seconds,
        "fit_seconds": sum(r["fit_s"] for r in timings.rounds),
        "client_train_seconds": sum(r["client_train_s"] for r in timings.rounds),
        "per_round": timings.rounds,
        "actors": timings.actors, "warmup_waves": timings.warmup_waves,
        "startup_seconds": (timings.startup_end or t_call) - t_call, "total_wall_seconds": total,
        "settings": asdict(s), "num_cpus_per_client": num_cpus,
    }


@script(__doc__)
@click.option("--clients", type=int, default=100)
@click.option("--samples", type=int, default=600, help="Samples per client.")
@click.option("--rounds", type=int, default=2)
@click.option("--seed", type=int, default=0)
@click.option("--data-dir", default=DATA_DIR)
@click.option("--num-cpus", type=float, default=1.0, help="Ray CPUs per client (= torch threads).")
def main(clients: int, samples: int, rounds: int, seed: int, data_dir: str, num_cpus: float) -> None:
    """Run Flower on the W1 workload; print one JSON line on stdout."""
    s = W1Settings(clients=clients, samples=samples, rounds=rounds, seed=seed, data_dir=data_dir,
                   threads=max(1, int(num_cpus)))
    result = run_flower(s, num_cpus)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    # Run from the importable module ``benchmarks.flower_w1`` rather than ``__main__``: Ray actors
    # then unpickle ``client_fn`` by reference and share one per-process cache (``process_state``).
    # Pickled by value from ``__main__``, every message would arrive with a fresh, empty cache.
    from benchmarks import flower_w1

    flower_w1.main()
