"""The federated round loop: set up once, then each round sample, train, attack, defend, apply, evaluate.

:class:`Simulation` builds what a run needs (data split, population, client
backend, the server's Ray service, attack, defense) and :meth:`Simulation.run_round`
is one round of SPEC section 2 for a sampled cohort, top to bottom. It
returns a :class:`RoundResult`; everything that is kept (rows, masks,
checkpoints, progress lines) is done by callbacks (:mod:`skymask_ray.recorders`).

Every random stream is derived from (seed, round, ...), so a resumed run
gives the same rows as an uninterrupted one and nothing but the model,
BatchNorm statistics and defense/attack state needs a checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import ray
import torch

from . import __version__
from .actors import ray_failure
from .attacks import ATTACKS
from .clients.pool import ClientBackend, ClientPool, LocalClients, sgd_settings
from .clients.training import SGDSettings, client_mode, num_steps
from .config import ExperimentConfig, config_hash
from .context import AttackContext, DefenseContext
from .data import ShardTable, client_shards, load_dataset, split_root
from .data.shards import seeded
from .defenses import build_defense
from .errors import ConfigError, RunError
from .evaluation import evaluate
from .kernels import tune_numpy_allocations
from .layout import setup_layout
from .linalg import finite_rows
from .models import ParamSpec, buffers_of, build_model
from .population import Population, malicious_population
from .preflight import MemoryEstimate, check_fits, estimate_memory, planned_workers
from .procfs import available_memory, process_age_s, pss_mb, reset_peak_rss, rss_mb
from .ray_session import init_ray, joins_cluster
from .recorders import LayoutRecorder
from .results import RoundRow, config_record, detection
from .run_folder import Checkpoint, Mode, RunFolder
from .seeding import child_seed, numpy_rng, torch_generator
from .skymask.service import ServerService

log = logging.getLogger(__name__)

# the run's actor classes as a one-line error names them (Ray's report names the class)
ACTORS = (("MaskTrainer", "the server's mask trainer"), ("ShardWorker", "a mask shard worker"),
          ("WorkerHost", "a client worker"))


@dataclass
class RoundResult:
    """One round as the callbacks see it: its row and which clients reported, were valid and accepted."""

    row: RoundRow
    clients: np.ndarray  # ids of the clients that reported, in row order of the update matrix
    malicious: torch.Tensor  # (len(clients),) ground truth
    valid: torch.Tensor  # (len(clients),) finite updates
    accepted: torch.Tensor  # (len(clients),)
    info: dict[str, Any] = field(default_factory=dict)


class RoundCallback(Protocol):
    """Bookkeeping around the loop (pfl-research's callback shape): setup phases and finished rounds."""

    def on_setup(self, sim: "Simulation", phase: str) -> None: ...

    def on_round_end(self, sim: "Simulation", result: RoundResult) -> None: ...


class Simulation:
    """One experiment on Ray. Use as a context manager (it owns actors and may own Ray).

    ``local_clients`` trains the clients in this process instead of on the Ray
    pool (tests); the server's service still runs on Ray.
    """

    def __init__(self, cfg: ExperimentConfig, out: str | Path | None = None, resume: bool = False,
                 overwrite: bool = False, callbacks: list[RoundCallback] | None = None,
                 local_clients: bool = False) -> None:
        from .recorders import FolderRecorder

        if resume and overwrite:
            raise ConfigError("choose one of --resume (continue the run in OUT) and --overwrite (replace it)")
        self.cfg = cfg
        self.folder = RunFolder(out or cfg.out or "results/run")
        self.hash = config_hash(cfg)
        self.config_record = config_record(cfg)
        mode: Mode = "resume" if resume else "overwrite" if overwrite else "new"
        ckpt = self.folder.prepare(self.hash, mode)  # refuses before anything is written or started
        if cfg.device == "cuda" and not (cfg.address or os.environ.get("RAY_ADDRESS")) and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for, but this machine has no usable CUDA GPU; use --device auto "
                              "or cpu, or --address a cluster with GPUs")
        self.recorder = FolderRecorder(self.folder, cfg, self.hash, resumed=ckpt is not None)
        self.callbacks: list[RoundCallback] = [self.recorder, *(callbacks or [])]
        reset_peak_rss()
        # where set-up time goes; the process's own start counts only for the run that starts Ray (a bench's later
        # cells, or a study's, would count every cell before them)
        self.setup_s: dict[str, float] = {} if ray.is_initialized() else {"interpreter_and_imports": process_age_s()}
        t = time.perf_counter()
        self.numpy_allocations = tune_numpy_allocations()  # before the first large array (the dataset)
        self.data = load_dataset(cfg.data, cfg.seed)
        t = self._lap("data", t)
        self._setup_model()
        joining = bool(cfg.address or os.environ.get("RAY_ADDRESS"))
        if not joining:  # before the split and before Ray: nothing big exists yet
            check_fits(self.memory_estimate(), available_memory(), "this machine")
        self._setup_data()
        self.start_round = 1
        if ckpt is not None:
            self._restore(ckpt)
        self.recorder.start(self.start_round)
        t = self._lap("model_and_split", t)
        self.started_ray = init_ray(cfg.address, connect_timeout_s=cfg.connect_timeout_s)
        t = self._lap("ray_start", t)
        try:
            if joining:
                res = ray.cluster_resources()
                check_fits(self.memory_estimate(int(res.get("CPU", 1))),
                           int(res.get("memory", 0) + res.get("object_store_memory", 0)), "the cluster")
            self._setup_actors(local_clients, t)
        except BaseException:
            self.close()  # what set-up started (trainer, placement group, workers) must not outlive it
            raise

    @property
    def out(self) -> Path:
        return self.folder.path

    def _lap(self, name: str, since: float) -> float:
        """Record set-up phase ``name`` as the seconds since ``since``; returns now."""
        now = time.perf_counter()
        self.setup_s[name] = round(now - since, 3)
        return now

    def _phase(self, phase: str) -> None:
        for cb in self.callbacks:
            cb.on_setup(self, phase)

    # ----- setup -------------------------------------------------------------------------------
    def memory_estimate(self, cpus: int | None = None) -> MemoryEstimate:
        """The run's peak memory (:mod:`skymask_ray.preflight`) with the workers it will start (one per CPU of
        this machine, or of the cluster's ``cpus``, unless ``workers`` is set)."""
        d, cfg = self.data, self.cfg
        workers = planned_workers(cfg, self._trained_at_once(), cpus)
        return estimate_memory(cfg, d.x_train.nbytes + d.y_train.nbytes, d.x_test.nbytes + d.y_test.nbytes,
                               len(d.y_train), self.spec.numel, workers)

    def _trained_at_once(self) -> int:
        """Clients the pool may train at once: every client of a table, a seeded population's cohort."""
        cfg = self.cfg
        return cfg.cohort_size if seeded(cfg.clients, cfg.data, len(self.data.y_train) - cfg.data.root_size) \
            else cfg.clients

    def _setup_data(self) -> None:
        """The root set, the clients' shards (a split table, or seeded clients: O(data) whatever N) and the
        population's attackers (O(attackers))."""
        cfg = self.cfg
        rng = numpy_rng(cfg.seed, "partition")
        root, rest = split_root(self.data.y_train, cfg.data.root_size, cfg.data.root_p, self.data.num_classes, rng)
        self.root = (torch.from_numpy(self.data.x_train[root]), torch.from_numpy(self.data.y_train[root]))
        self.shards = client_shards(self.data.y_train, rest, cfg.clients, cfg.data, self.data.num_classes, rng,
                                    cfg.seed, self.data.groups)
        mal = malicious_population(cfg.clients, cfg.num_malicious, cfg.malicious_selection, cfg.seed)
        self.population = Population(mal, cfg.cohort_size, cfg.sampling, cfg.malicious_fraction, cfg.dropout, cfg.seed)
        self.x_test = torch.from_numpy(self.data.x_test)
        self.y_test = torch.from_numpy(self.data.y_test)
        s = sgd_settings(cfg)
        steps = num_steps(self.shards.median_size(), s) or 1
        self.server_sgd = SGDSettings(lr=s.lr, batch_size=s.batch_size, grad_clip=s.grad_clip,
                                      steps=steps if cfg.train.server_budget == "matched" else None, epochs=1)
        how = "" if isinstance(self.shards, ShardTable) else f", {cfg.data.samples_per_client} each, seeded per client"
        self._phase(f"data: {cfg.data.dataset}, {len(self.data.y_train)} training samples over {cfg.clients} "
                    f"clients{how}")

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg.model, self.data.input_shape, self.data.num_classes, cfg.seed)
        self.spec = ParamSpec.of(self.model)
        self.weights = self.spec.flatten(self.model)
        self.buffers = buffers_of(self.model)
        self.attack = ATTACKS.get(cfg.attack)(cfg.attack_params, cfg, self.data.num_classes)
        self.defense = build_defense(cfg, self.spec)  # its settings only: never cfg, the run seed or the truth
        self.needs_server = self.defense.needs_server_update or self.attack.needs_server_update

    def _setup_actors(self, local_clients: bool, t: float) -> None:
        cfg = self.cfg
        self.layout, self.pg = setup_layout(cfg.workers, self._trained_at_once(), cfg.device,
                                            workers_per_gpu=cfg.workers_per_gpu,
                                            model_params=self.spec.numel, vmap_chunk=cfg.train.vmap_chunk,
                                            grow=joins_cluster(cfg.address))
        t = self._lap("layout", t)
        # the server's streams (g_0, mask training, clustering) hang off a seed derived from the run seed: the mask
        # selector a defense is handed must not lead back to the seed that recomputes the attackers
        self.server = ServerService(cfg.model, self.data.input_shape, self.data.num_classes, self.root, cfg.skymask,
                                    cfg.device, self.layout, self.pg, child_seed(cfg.seed, "server"),
                                    cfg.cohort_size + 1 if cfg.defense == "skymask" else None,
                                    start=self.needs_server or cfg.defense == "skymask")
        poisons = self.attack.trains and self.population.malicious.count > 0
        poisoned = self.population.malicious if poisons else frozenset()
        poison = self.attack.poison_data if poisons else None
        poison_sgd = sgd_settings(cfg, **self.attack.poison_sgd()) if poison and self.attack.poison_sgd() else None
        args = (cfg, self.data.x_train, self.data.y_train, self.shards, poisoned, self.data.num_classes,
                self.spec.numel)
        self.clients: ClientBackend = LocalClients(*args, poison, poison_sgd) if local_clients else \
            ClientPool(*args, self.layout, poison=poison, poison_sgd=poison_sgd)
        self.callbacks.append(LayoutRecorder())  # OUT/_state/layout.json once round 1 is done (the folder committed)
        t = self._lap("workers", t)  # the trainer starts meanwhile
        self._phase(f"started {self.layout.summary()}"
                    if not local_clients else "clients: in-process")
        self.trainer_device, server_kernels = self.server.wait_ready()
        modes = {client_mode(cfg.train.client_exec, p.device, bool(self.buffers)) for p in self.layout.nodes if p.workers}
        self.kernels = {"client_training": "/".join(sorted(modes)), **server_kernels,
                        "numpy_hugepages": self.numpy_allocations.summary()}
        self._lap("server", t)
        self.setup_s["total"] = round(sum(self.setup_s.values()), 3)
        self._phase(f"server ready on {self.trainer_device}; kernels: "
                    + ", ".join(f"{k}={v}" if k == "client_training" else v for k, v in self.kernels.items()))

    def _restore(self, ckpt: Checkpoint) -> None:
        if tuple(ckpt.weights.shape) != tuple(self.weights.shape):
            raise ConfigError(f"the checkpoint in {self.out} holds {ckpt.weights.numel()} weights, the model has "
                              f"{self.weights.numel()}; pass --overwrite to start over")
        self.weights, self.buffers = ckpt.weights, ckpt.buffers
        self.defense.load_state_dict(ckpt.defense_state)
        self.attack.load_state_dict(ckpt.attack_state)
        self.start_round = ckpt.round + 1

    def checkpoint(self, r: int) -> Checkpoint:
        """The state after round ``r`` (what a resume needs)."""
        return Checkpoint(r, self.weights, self.buffers, self.defense.state_dict(), self.attack.state_dict())

    # ----- one round ---------------------------------------------------------------------------
    def run_round(self, r: int) -> RoundResult:
        """One round of SPEC section 2 over this round's cohort; returns its result."""
        cfg = self.cfg
        t_start = time.perf_counter()
        w = self.weights

        # 0. the cohort, and who of it reports
        cohort = self.population.cohort(r)
        dropped = self.population.dropped(cohort, r)
        ids = cohort[~dropped]
        mal = torch.from_numpy(self.population.is_malicious(ids))
        k = len(ids)

        # 1-2. broadcast and local training (model-poisoning attackers skip the work)
        train_pos = [i for i in range(k) if self.attack.trains or not bool(mal[i])]
        trained = self.clients.train(w, self.buffers, r, [int(ids[i]) for i in train_pos])
        if len(train_pos) == k:
            updates = trained.updates
        else:
            updates = torch.zeros(k, self.spec.numel)
            updates[train_pos] = trained.updates
        t_clients = time.perf_counter() - t_start

        t0 = time.perf_counter()
        server_update = self.server.server_update(w, self.buffers, self.server_sgd, r) if self.needs_server else None
        t_server = time.perf_counter() - t0

        # 3. the attack replaces the malicious rows (its round state advances every round, attackers or not)
        t0 = time.perf_counter()
        self.attack.begin_round(r, w)
        if bool(mal.any()):
            actx = AttackContext(
                round=r, global_weights=w, spec=self.spec, num_clients=k, num_malicious=int(mal.sum()),
                generator=torch_generator(cfg.seed, "attack", r), seed=cfg.seed, server_update=server_update,
                malicious=mal, model=self.model, buffers=self.buffers, root=self.root,
                mask_selector=self.server.selector(w, self.buffers, r))
            updates = self.attack.apply(updates, mal, actx)
            if tuple(updates.shape) != (k, self.spec.numel):
                raise ValueError(f"attack {cfg.attack!r} returned updates of shape {tuple(updates.shape)}, "
                                 f"expected ({k}, {self.spec.numel})")
        t_attack = time.perf_counter() - t0

        # 4. the defense aggregates the valid updates (non-finite rows are rejected and recorded)
        t0 = time.perf_counter()
        valid = finite_rows(updates)
        n_valid = int(valid.sum())
        if k and n_valid == 0:
            raise RunError(f"round {r}: every client update is NaN/Inf: training diverged; lower --local-lr or set "
                           f"--grad-clip (rounds before {r} are kept in {self.folder.rounds})")
        accepted = torch.zeros(k, dtype=torch.bool)
        skipped = None
        info: dict[str, Any] = {}
        fallback = False
        if n_valid < self.defense.min_rows():
            skipped = f"{n_valid} valid reports, {cfg.defense} needs {self.defense.min_rows()}"
        else:
            dctx = DefenseContext(
                round=r, global_weights=w, spec=self.spec, num_clients=n_valid, declared_f=cfg.num_declared_f,
                generator=torch_generator(cfg.seed, "defense", r), server_update=server_update,
                mask_selector=self.server.selector(w, self.buffers, r),
                client_ids=torch.from_numpy(ids)[valid])
            agg = self.defense.aggregate(updates if bool(valid.all()) else updates[valid], dctx)
            accepted[valid] = agg.accepted.cpu()
            info, fallback = agg.info, agg.fallback
            # 5. apply
            self.weights = w - cfg.train.global_lr * agg.update.cpu()
            if not bool(torch.isfinite(self.weights).all()):
                raise RunError(f"round {r}: the global model became NaN/Inf: training diverged; lower --global-lr or "
                               f"--local-lr (rounds before {r} are kept in {self.folder.rounds})")
            if self.buffers and accepted.any():  # BatchNorm statistics: mean over the accepted (crafted: global)
                full = {n: b.expand(k, *b.shape).clone() for n, b in self.buffers.items()}
                for n, b in trained.buffers.items():
                    full[n][train_pos] = b
                self.buffers = {n: b[accepted].mean(0) if b.is_floating_point() else b[accepted].max(0).values
                                for n, b in full.items()}
        t_defense = time.perf_counter() - t0

        # evaluate
        t0 = time.perf_counter()
        ev = None
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            ev = evaluate(self.model, self.spec, self.weights, self.buffers, self.x_test, self.y_test, self.attack)
        t_eval = time.perf_counter() - t0

        det = detection(accepted, mal)
        server_mem = self.server.memory_mb()
        row = RoundRow(
            round=r, dataset=cfg.data.dataset, model=cfg.model, clients=cfg.clients,
            malicious_fraction=cfg.malicious_fraction, malicious=cfg.num_malicious,
            attack=cfg.attack, defense=cfg.defense, seed=cfg.seed,
            accuracy=ev.accuracy if ev else None, loss=ev.loss if ev else None,
            backdoor_success=ev.backdoor_success if ev else None,
            tp=det.tp, fp=det.fp, tn=det.tn, fn=det.fn, tpr=det.tpr, fpr=det.fpr,
            accepted=int(accepted.sum()), invalid=int((~valid).sum()), fallback=fallback,
            t_clients=t_clients, t_server=t_server, t_attack=t_attack, t_defense=t_defense,
            t_eval=t_eval, t_round=time.perf_counter() - t_start,
            peak_rss_mb=rss_mb() + trained.worker_rss_mb + server_mem[0],
            mem_pss_mb=pss_mb() + trained.worker_pss_mb + server_mem[1],
            trained_clients=len(train_pos),
            mask_on_mean=info.get("mask_on_mean"), mask_steps=len(info.get("mask_losses", [])) or None,
            t_mask_train=info.get("t_mask_train"), t_mask_cluster=info.get("t_mask_cluster"),
            single_component=info.get("single_component"),
            cohort=len(cohort), malicious_in_cohort=int(self.population.is_malicious(cohort).sum()),
            dropped=int(dropped.sum()), declared_f=cfg.num_declared_f, skipped=skipped,
            config=self.config_record, config_hash=self.hash, version=__version__,
        )
        return RoundResult(row, ids, mal, valid, accepted, info)

    # ----- whole run ---------------------------------------------------------------------------
    def run(self) -> Path:
        """Run the remaining rounds; returns the path of rounds.parquet."""
        for r in range(self.start_round, self.cfg.rounds + 1):
            try:
                result = self.run_round(r)
            except ray.exceptions.RayError as exc:  # e.g. the mask trainer killed for lack of memory
                who = next((name for cls, name in ACTORS if cls in str(exc)), "a Ray actor")
                err = ray_failure(exc, f"round {r}", who)
                raise RunError(f"{err} (rounds before {r} are kept in {self.folder.rounds})") from None
            for cb in self.callbacks:
                cb.on_round_end(self, result)
        return self.folder.rounds

    def close(self) -> None:
        """Stop the workers and the server and free the trainer's reservation (safe after a failed set-up)."""
        if getattr(self, "clients", None) is not None:
            self.clients.shutdown()
        if getattr(self, "server", None) is not None:
            self.server.close()
        if getattr(self, "pg", None) is not None:
            ray.util.remove_placement_group(self.pg)
        if self.started_ray:
            ray.shutdown()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None, resume: bool = False,
                   on_round: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = False,
                   on_setup: Callable[[str], None] | None = None) -> Path:
    """Run one experiment end to end; returns the path of its rounds.parquet.

    ``on_round`` receives each finished round's row (a dict), ``on_setup`` each set-up phase line.
    """
    from .recorders import FunctionCallback

    callbacks = [FunctionCallback(on_round, on_setup)] if on_round or on_setup else []
    with Simulation(cfg, out, resume, overwrite, callbacks) as sim:
        return sim.run()
