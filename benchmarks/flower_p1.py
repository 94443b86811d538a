"""Workload P1 in Flower's simulation engine (Ray backend): the Flower side of ``benchmarks.p1_throughput``.

P1 (shaped on pfl-research's CIFAR-10 benchmark): Fashion-MNIST, the paper's
cnn (:class:`skymask_ray.models.CNN`), 1000 IID clients of 50 samples, 50
clients sampled per round (``fraction_fit = 0.05``), 1 local epoch of SGD
(batch 10, lr 0.5, element-wise gradient clamp 0.01), FedAvg (server step 1,
i.e. the plain weighted mean), no attack, 50 rounds, centralised evaluation
on the 10,000-sample test set every 10 rounds (``evaluate_fn``; no federated
evaluation, ``fraction_evaluate = 0``).

To compare frameworks, not data or models, this script takes from
skymask-ray what a Flower user would otherwise write themselves: the dataset
loader, the root set and client split (``split_root``/``split_clients`` on
the ``(seed, "partition")`` stream, so client k holds exactly skymask-ray's
client k's 50 samples), the initial weights (``build_model(.., seed)``), the
channels-last memory format of the conv weights, each client's mini-batch
order (``client_generator(seed, round, k)``) and the evaluation function
(:func:`skymask_ray.evaluation.evaluate`). The local loop is written out here
(plain module, eager autograd, clamp, in-place SGD step), the same as
skymask-ray's ``train_sequential`` does per client. The cohort is Flower's
own uniform draw, so it differs from skymask-ray's.

Flower is not a dependency of skymask-ray; run this from the repository root
with ``benchmarks/.flower-venv/bin/python -m benchmarks.flower_p1`` (the
driver, ``python -m benchmarks.p1_throughput``, creates that venv and does
so). It uses ``flwr.simulation.run_simulation`` (deprecated since Flower
1.13 in favour of ``flwr run``, still shipped in 1.41) with the Ray backend,
``client_resources = {"num_cpus": 1}`` (one actor, and one torch thread, per
CPU), a legacy ``NumPyClient`` and the legacy ``FedAvg`` strategy. There is
no warm-up: every actor loads the data and pays torch's first-step costs
inside round 1, as in a user's run.

It prints one JSON line on stdout: the number of actor processes that ran
clients; per round, the clients' own fit seconds summed (set weights, local
SGD, get weights, inside the actors) and the times (``time.perf_counter``
in the server's thread) of ``configure_fit`` start, ``aggregate_fit`` end,
and the start and end of the strategy's ``evaluate`` (centralised evaluation,
a no-op except every 10th round); plus the evaluation results.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import script


@dataclass(frozen=True)
class P1Settings:
    """Everything a P1 client and server need; frozen and picklable so it can travel to Ray actors."""

    clients: int = 1000
    cohort: int = 50
    samples: int = 50
    rounds: int = 50
    lr: float = 0.5
    grad_clip: float | None = 0.01
    batch_size: int = 10
    epochs: int = 1
    eval_every: int = 10
    seed: int = 0
    root_size: int = 100
    data_dir: str | None = None
    threads: int = 1

    @property
    def fraction_fit(self) -> float:
        return self.cohort / self.clients


def data_config(s: P1Settings) -> Any:
    """skymask-ray's DataConfig for P1 (IID, capped at ``samples`` per client)."""
    from skymask_ray.config import DataConfig

    return DataConfig(dataset="fmnist", data_dir=s.data_dir, partition="iid", samples_per_client=s.samples,
                      root_size=s.root_size)


def build(s: P1Settings, dataset: Any) -> nn.Module:
    """The cnn with skymask-ray's initial weights for ``s.seed``, conv weights channels-last."""
    from skymask_ray.models import build_model, channels_last

    return channels_last(build_model("cnn", dataset.input_shape, dataset.num_classes, s.seed))


@dataclass
class ProcessState:
    """What one process (a Flower actor, or the server) loads once and reuses for every message."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shards: list[np.ndarray]
    model: nn.Module


@functools.cache
def process_state(s: P1Settings) -> ProcessState:
    """Load the data, split it exactly as skymask-ray does, build the model; once per process."""
    from skymask_ray.data import load_dataset, split_clients, split_root
    from skymask_ray.seeding import numpy_rng

    cfg = data_config(s)
    data = load_dataset(cfg, s.seed)
    rng = numpy_rng(s.seed, "partition")
    _, rest = split_root(data.y_train, cfg.root_size, cfg.root_p, data.num_classes, rng)
    shards = split_clients(data.y_train, rest, s.clients, cfg, data.num_classes, rng, data.groups)
    return ProcessState(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train),
                        torch.from_numpy(data.x_test), torch.from_numpy(data.y_test), shards, build(s, data))


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as C-contiguous numpy arrays (Flower's ``NDArrays``), ``state_dict`` order."""
    return [np.ascontiguousarray(v.detach().cpu().numpy()) for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Copy ``weights`` into the model in place (the conv weights keep their channels-last layout)."""
    with torch.no_grad():
        for v, w in zip(model.state_dict().values(), weights, strict=True):
            v.copy_(torch.from_numpy(np.asarray(w)))


def local_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: P1Settings, gen: torch.Generator) -> None:
    """``s.epochs`` shuffled epochs of SGD with the element-wise clamp, in place (skymask-ray's per-client loop)."""
    from skymask_ray.clients.training import SGDSettings, batch_plan

    model.train()
    params = list(model.parameters())
    plan = SGDSettings(lr=s.lr, batch_size=s.batch_size, epochs=s.epochs, grad_clip=s.grad_clip)
    for idx in batch_plan(len(y), plan, gen):
        for p in params:
            p.grad = None
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        with torch.no_grad():
            for p in params:
                g = p.grad if s.grad_clip is None else p.grad.clamp_(-s.grad_clip, s.grad_clip)
                p.sub_(g, alpha=s.lr)


@functools.cache
def _client_class() -> type:
    """The NumPyClient subclass, built on first use so importing this module needs no Flower."""
    from flwr.client import NumPyClient

    class P1Client(NumPyClient):
        """One virtual P1 client: local SGD on its shard from the global weights."""

        def __init__(self, cid: int, s: P1Settings) -> None:
            self.cid, self.s = cid, s

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
            from skymask_ray.clients.training import client_generator

            if torch.get_num_threads() != self.s.threads:
                torch.set_num_threads(self.s.threads)
            st = process_state(self.s)
            idx = torch.from_numpy(st.shards[self.cid])
            x, y = st.x[idx], st.y[idx]
            t0 = time.perf_counter()
            set_weights(st.model, parameters)
            local_sgd(st.model, x, y, self.s, client_generator(self.s.seed, int(config["server_round"]), self.cid))
            weights = get_weights(st.model)
            return weights, len(y), {"train_s": time.perf_counter() - t0, "pid": os.getpid()}

    return P1Client


def client_fn(s: P1Settings, context: Any) -> Any:
    """Flower's client factory: the client of this supernode's partition id."""
    return _client_class()(int(context.node_config["partition-id"]), s).to_client()


@dataclass
class Timings:
    """What the server thread records; read by :func:`run_flower` after the simulation ends."""

    eval0_end: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)


def _evaluate_fn(s: P1Settings) -> Any:
    """Centralised evaluation every ``eval_every`` rounds and at the last round (skymask-ray's cadence)."""
    from skymask_ray.evaluation import evaluate
    from skymask_ray.models import ParamSpec

    def evaluate_fn(server_round: int, weights: list[np.ndarray], config: dict[str, Any]) -> Any:
        if server_round == 0 or (server_round % s.eval_every and server_round != s.rounds):
            return None
        st = process_state(s)  # the server process's own copy (test set and model), loaded on first use
        spec = ParamSpec.of(st.model)
        flat = torch.cat([torch.from_numpy(np.asarray(w)).reshape(-1) for w in weights])
        ev = evaluate(st.model, spec, flat, {}, st.x_test, st.y_test)
        return ev.loss, {"accuracy": ev.accuracy}

    return evaluate_fn


def _server_fn_factory(s: P1Settings, timings: Timings) -> Any:
    """The ServerApp's ``server_fn``: FedAvg (fraction_fit = cohort / clients) that stamps each round."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg

    class TimedFedAvg(FedAvg):
        """FedAvg that stamps configure_fit, aggregate_fit's end and the centralised evaluation."""

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            timings.rounds.append({"round": server_round, "fit_start": time.perf_counter()})
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            timings.rounds[-1].update(fit_end=time.perf_counter(), updates=len(results), failures=len(failures),
                                      client_train_s=sum(float(r.metrics["train_s"]) for _, r in results))
            timings.pids.update(int(r.metrics["pid"]) for _, r in results)
            return out

        def evaluate(self, server_round: int, parameters: Any) -> Any:
            t0 = time.perf_counter()
            out = super().evaluate(server_round, parameters)
            t1 = time.perf_counter()
            if server_round == 0:
                timings.eval0_end = t1
            else:
                timings.rounds[-1].update(eval_start=t0, eval_end=t1)
            if out is not None:
                timings.evals.append({"round": server_round, "loss": out[0], "accuracy": out[1]["accuracy"],
                                      "seconds": t1 - t0, "torch_threads": torch.get_num_threads()})
            return out

    def server_fn(context: Any) -> Any:
        strategy = TimedFedAvg(
            fraction_fit=s.fraction_fit, fraction_evaluate=0.0,
            min_fit_clients=s.cohort, min_evaluate_clients=0, min_available_clients=s.clients,
            evaluate_fn=_evaluate_fn(s),
            on_fit_config_fn=lambda r: {"server_round": r},
            initial_parameters=ndarrays_to_parameters(get_weights(process_state(s).model)),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=s.rounds))

    return server_fn


def run_flower(s: P1Settings, num_cpus: float = 1.0) -> dict[str, Any]:
    """Run P1 in Flower's Ray simulation; returns the result record (see the module docstring)."""
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
    t_call, t_call_epoch = time.perf_counter(), time.time()
    run_simulation(
        server_app=ServerApp(server_fn=_server_fn_factory(s, timings)),
        client_app=ClientApp(client_fn=functools.partial(client_fn, s)),
        num_supernodes=s.clients,
        backend_name="ray",
        backend_config=backend_config,
    )
    t_done = time.perf_counter()
    done = [r for r in timings.rounds if "eval_end" in r]
    if len(done) != s.rounds or timings.eval0_end is None:
        raise RuntimeError(f"Flower finished {len(done)} of {s.rounds} rounds; see its log above")
    rel = lambda t: t - t_call  # noqa: E731  (seconds since run_simulation was called)
    rounds = []
    prev = timings.eval0_end
    for r in timings.rounds:
        rounds.append({"round": r["round"], "updates": r["updates"], "failures": r["failures"],
                       "fit_s": r["fit_end"] - r["fit_start"], "eval_s": r["eval_end"] - r["eval_start"],
                       "interval_s": r["eval_end"] - prev, "client_train_s": r["client_train_s"],
                       "end_s": rel(r["eval_end"])})
        prev = r["eval_end"]
    return {
        "framework": "flower", "version": flwr.__version__, "ray_version": ray.__version__,
        "torch_version": torch.__version__, "settings": asdict(s), "num_cpus_per_client": num_cpus,
        "fraction_fit": s.fraction_fit, "t_call_epoch": t_call_epoch, "actors": len(timings.pids),
        "before_round1_s": rel(timings.rounds[0]["fit_start"]), "last_round_end_s": rel(prev),
        "run_simulation_s": t_done - t_call, "rounds": rounds, "evals": timings.evals,
    }


def p1_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The P1 workload's options, shared by this script and ``benchmarks.p1_throughput``."""
    options = [
        click.option("--clients", type=int, default=1000),
        click.option("--cohort", type=int, default=50, help="Clients per round (fraction_fit = cohort / clients)."),
        click.option("--samples", type=int, default=50, help="Samples per client (a cap)."),
        click.option("--rounds", type=int, default=50),
        click.option("--eval-every", type=int, default=10),
        click.option("--batch-size", type=int, default=10),
        click.option("--lr", type=float, default=0.5),
        click.option("--grad-clip", type=float, default=0.01),
        click.option("--seed", type=int, default=0),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@script(__doc__)
@p1_options
@click.option("--data-dir", default=None)
@click.option("--num-cpus", type=float, default=1.0, help="Ray CPUs per client (= torch threads).")
def main(clients: int, cohort: int, samples: int, rounds: int, eval_every: int, lr: float, grad_clip: float,
         batch_size: int, seed: int, data_dir: str | None, num_cpus: float) -> None:
    """Run Flower on the P1 workload; print one JSON line on stdout."""
    s = P1Settings(clients=clients, cohort=cohort, samples=samples, rounds=rounds, lr=lr, grad_clip=grad_clip,
                   batch_size=batch_size, eval_every=eval_every, seed=seed, data_dir=data_dir,
                   threads=max(1, int(num_cpus)))
    result = run_flower(s, num_cpus)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    # Run from the importable module ``benchmarks.flower_p1`` rather than ``__main__``: Ray actors
    # then unpickle ``client_fn`` by reference and share one per-process cache (``process_state``).
    from benchmarks import flower_p1

    flower_p1.main()
