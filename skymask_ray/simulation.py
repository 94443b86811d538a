"""The federated round loop: setup once, then broadcast, train, attack, defend, apply, evaluate, record.

:class:`Simulation` builds everything a run needs (data split, Ray client
pool, mask-trainer actor, attack, defense) and :meth:`Simulation.run_round`
is one round of SPEC section 2, top to bottom. A checkpoint after each round
(global model, BatchNorm statistics, defense state) makes ``resume`` give the
same rows as an uninterrupted run: every random stream is derived from
(seed, round, ...), so no other RNG state needs saving.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from . import __version__
from .attacks import ATTACKS
from .clients.pool import ClientPool, reset_peak_rss, rss_mb, sgd_settings
from .clients.training import SGDSettings, num_steps
from .config import ExperimentConfig, config_hash, save_config
from .context import RoundContext
from .data import load_dataset, split_clients, split_root
from .defenses import DEFENSES
from .evaluation import evaluate
from .linalg import finite_rows, from_readonly
from .models import ParamSpec, buffers_of, build_model
from .results import MASK_SCHEMA, SCHEMA, ParquetLog, detection
from .runtime import init_ray, plan_layout, reserve_trainer
from .seeding import numpy_rng, torch_generator
from .skymask.sharding import auto_shards, sharded_select, start_shard_workers
from .skymask.trainer import MaskSelection, MaskTrainer, default_mask_lr, stack_updates

log = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class Checkpoint:
    """Everything needed to continue after ``round``."""

    round: int
    weights: torch.Tensor
    buffers: dict[str, torch.Tensor]
    defense_state: dict[str, Any]
    config_hash: str


class Simulation:
    """One experiment on Ray. Use as a context manager (it owns actors and may own Ray)."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(out or cfg.out or "results/run")
        self.out.mkdir(parents=True, exist_ok=True)
        self.hash = config_hash(cfg)
        reset_peak_rss()
        self._setup_data()
        self._setup_model()
        self.started_ray = init_ray(cfg.address)
        try:
            self._setup_actors()
        except BaseException:
            if self.started_ray:
                ray.shutdown()
            raise
        self.start_round = 1
        ckpt_path = self.out / "checkpoint.pt"
        if resume and ckpt_path.exists():
            self._restore(torch.load(ckpt_path, weights_only=False))
        self.rounds_log = ParquetLog(self.out / "rounds.parquet", SCHEMA, keep_existing=resume)
        self.rounds_log.truncate(lambda r: r["round"] < self.start_round)
        self.masks_log = ParquetLog(self.out / "masks.parquet", MASK_SCHEMA, keep_existing=resume) \
            if cfg.defense == "skymask" else None
        if self.masks_log is not None:
            self.masks_log.truncate(lambda r: r["round"] < self.start_round)
        save_config(cfg, self.out / "config.yaml")

    # ----- setup -------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        cfg = self.cfg
        self.data = load_dataset(cfg.data, cfg.seed)
        rng = numpy_rng(cfg.seed, "partition")
        root, rest = split_root(self.data.y_train, cfg.data.root_size, cfg.data.root_p, self.data.num_classes, rng)
        self.root = (torch.from_numpy(self.data.x_train[root]), torch.from_numpy(self.data.y_train[root]))
        self.parts = split_clients(self.data.y_train, rest, cfg.clients, cfg.data, self.data.num_classes, rng,
                                   self.data.groups)
        n, f = cfg.clients, cfg.num_malicious
        mal = np.zeros(n, dtype=bool)
        if cfg.malicious_selection == "first":
            mal[:f] = True
        else:
            mal[numpy_rng(cfg.seed, "malicious").choice(n, size=f, replace=False)] = True
        self.malicious = torch.from_numpy(mal)
        self.x_test = torch.from_numpy(self.data.x_test)
        self.y_test = torch.from_numpy(self.data.y_test)

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg.model, self.data.input_shape, self.data.num_classes, cfg.seed)
        self.spec = ParamSpec.of(self.model)
        self.weights = self.spec.flatten(self.model)
        self.buffers = buffers_of(self.model)
        self.attack = ATTACKS.get(cfg.attack)(cfg.attack_params, cfg, self.data.num_classes)
        self.defense = DEFENSES.get(cfg.defense)(cfg.defense_params, cfg)
        s = sgd_settings(cfg)
        steps = statistics.median_low([num_steps(len(p), s) for p in self.parts]) or 1
        self.server_sgd = SGDSettings(lr=s.lr, batch_size=s.batch_size, grad_clip=s.grad_clip,
                                      steps=steps if cfg.train.server_budget == "matched" else None,
                                      epochs=1)
        self.needs_server = self.defense.needs_server_update or getattr(self.attack, "needs_server_update", False)

    def _setup_actors(self) -> None:
        cfg = self.cfg
        self.layout = plan_layout(cfg.workers, cfg.clients, cfg.device)
        self.pg = reserve_trainer(self.layout)
        trainer_cls = ray.remote(MaskTrainer).options(
            num_cpus=self.layout.trainer_bundle["CPU"],
            num_gpus=self.layout.trainer_bundle.get("GPU", 0),
            max_restarts=-1,
            max_task_retries=-1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=0),
        )
        self.root_refs = (ray.put(self.root[0].numpy()), ray.put(self.root[1].numpy()))
        self.trainer = trainer_cls.remote(
            cfg.model, self.data.input_shape, self.data.num_classes, *self.root_refs, cfg.skymask, cfg.device,
        )
        # the fused mask step compiles (seconds) while the client pool starts: set-up, not round time
        kernels = self.trainer.prepare_kernels.remote(cfg.clients + 1) if cfg.defense == "skymask" else None
        poisoned = [bool(m) and self.attack.trains for m in self.malicious.tolist()]
        self.pool = ClientPool(cfg, self.data.x_train, self.data.y_train, self.parts, poisoned,
                               self.data.num_classes, self.spec.numel, self.layout.workers, self.layout.worker_cpus)
        self.trainer_device = ray.get(self.trainer.device_name.remote(), timeout=600)
        if kernels is not None:
            ray.get(kernels, timeout=600)
        self.mask_lr = default_mask_lr(cfg.skymask, cfg.model)
        self.shard_workers: list = []

    def _restore(self, ckpt: Checkpoint) -> None:
        if ckpt.config_hash != self.hash:
            raise RuntimeError(f"checkpoint in {self.out} belongs to another config ({ckpt.config_hash} != {self.hash})")
        self.weights, self.buffers = ckpt.weights, ckpt.buffers
        self.defense.load_state_dict(ckpt.defense_state)
        self.start_round = ckpt.round + 1

    # ----- one round ---------------------------------------------------------------------------
    def run_round(self, r: int) -> dict[str, Any]:
        """One round of SPEC section 2; returns its result row."""
        cfg, n = self.cfg, self.cfg.clients
        t_start = time.perf_counter()
        w = self.weights

        # 1-2. broadcast and local training (model-poisoning attackers skip the work)
        train_ids = [k for k in range(n) if self.attack.trains or not bool(self.malicious[k])]
        trained = self.pool.train(w, self.buffers, r, train_ids)
        updates = trained.updates
        t_clients = time.perf_counter() - t_start

        t0 = time.perf_counter()
        server_update = None
        if self.needs_server:
            g0, _ = ray.get(self.trainer.server_update.remote(
                w.numpy(), {k: b.numpy() for k, b in self.buffers.items()}, self.server_sgd, cfg.seed, r), timeout=3600)
            server_update = torch.from_numpy(np.array(g0))
        t_server = time.perf_counter() - t0

        ctx = RoundContext(
            round=r, global_weights=w, spec=self.spec, num_clients=n, num_malicious=cfg.num_malicious,
            generator=torch_generator(cfg.seed, "attack", r), seed=cfg.seed, server_update=server_update,
            malicious=self.malicious, model=self.model, buffers=self.buffers,
            root=self.root,
            mask_selector=self._mask_selector(w, r),
        )

        # 3. the attack replaces the malicious rows
        t0 = time.perf_counter()
        updates = self.attack.apply(updates, self.malicious, ctx)
        if tuple(updates.shape) != (n, self.spec.numel):
            raise ValueError(f"attack {cfg.attack!r} returned updates of shape {tuple(updates.shape)}, "
                             f"expected ({n}, {self.spec.numel})")
        t_attack = time.perf_counter() - t0

        # 4. the defense aggregates the valid updates (non-finite rows are rejected and recorded)
        t0 = time.perf_counter()
        valid = finite_rows(updates)
        ctx.generator = torch_generator(cfg.seed, "defense", r)
        ctx.num_clients = int(valid.sum())
        ctx.client_ids = torch.nonzero(valid).flatten()
        if not valid.any():
            raise RuntimeError(f"round {r}: every update is NaN/Inf; training diverged (lower local_lr?)")
        agg = self.defense.aggregate(updates if bool(valid.all()) else updates[valid], ctx)
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[valid] = agg.accepted.cpu()
        t_defense = time.perf_counter() - t0

        # 5. apply and evaluate
        self.weights = w - cfg.train.global_lr * agg.update.cpu()
        if self.buffers and accepted.any():
            self.buffers = {k: b[accepted].mean(0) if b.is_floating_point() else b[accepted].max(0).values
                            for k, b in trained.buffers.items()}
        t0 = time.perf_counter()
        ev = None
        if r % cfg.eval_every == 0 or r == cfg.rounds:
            ev = evaluate(self.model, self.spec, self.weights, self.buffers, self.x_test, self.y_test, self.attack)
        t_eval = time.perf_counter() - t0

        det = detection(accepted, self.malicious)
        trainer_rss = ray.get(self.trainer.rss_mb.remote(), timeout=600)
        row = {
            "round": r, "dataset": cfg.data.dataset, "model": cfg.model, "clients": n,
            "malicious_fraction": cfg.malicious_fraction, "malicious": cfg.num_malicious,
            "attack": cfg.attack, "defense": cfg.defense, "seed": cfg.seed,
            "accuracy": ev.accuracy if ev else None, "loss": ev.loss if ev else None,
            "backdoor_success": ev.backdoor_success if ev else None,
            "tp": det.tp, "fp": det.fp, "tn": det.tn, "fn": det.fn, "tpr": det.tpr, "fpr": det.fpr,
            "accepted": int(accepted.sum()), "invalid": int((~valid).sum()), "fallback": agg.fallback,
            "t_clients": t_clients, "t_server": t_server, "t_attack": t_attack, "t_defense": t_defense,
            "t_eval": t_eval, "t_round": time.perf_counter() - t_start,
            "peak_rss_mb": rss_mb() + trained.worker_rss_mb + trainer_rss,
            "trained_clients": len(train_ids),
            "mask_on_mean": agg.info.get("mask_on_mean"), "mask_steps": len(agg.info.get("mask_losses", [])) or None,
            "t_mask_train": agg.info.get("t_mask_train"), "t_mask_cluster": agg.info.get("t_mask_cluster"),
            "config_hash": self.hash, "version": __version__,
        }
        self.rounds_log.append(row)
        if self.masks_log is not None and "mask_coords" in agg.info:
            self._log_masks(r, agg.info, valid, accepted)
        torch.save(Checkpoint(r, self.weights, self.buffers, self.defense.state_dict(), self.hash),
                   self.out / "checkpoint.pt")
        return row

    def _mask_selector(self, w: torch.Tensor, r: int) -> Callable[[torch.Tensor, torch.Tensor], MaskSelection]:
        """Send SkyMask's server work to the trainer actor (updates travel once, as one array)."""

        def select(updates: torch.Tensor, server_update: torch.Tensor) -> MaskSelection:
            bufs = {k: b.numpy() for k, b in self.buffers.items()}
            n_shards = auto_shards(updates.shape[0] + 1, updates.shape[1], self.cfg.skymask)
            if n_shards > 1:
                if len(self.shard_workers) != n_shards:
                    self.shard_workers = start_shard_workers(n_shards, self.cfg.skymask.shard_memory_gb)
                return sharded_select(self.shard_workers, self.trainer, w, bufs, updates, server_update,
                                      self.cfg.skymask, self.mask_lr, self.cfg.seed, r)
            ref = ray.put(stack_updates(updates.cpu(), server_update.cpu()).numpy())
            return ray.get(self.trainer.select.remote(w.numpy(), bufs, ref, self.cfg.seed, r), timeout=3600)

        return select

    def _log_masks(self, r: int, info: dict[str, Any], valid: torch.Tensor, accepted: torch.Tensor) -> None:
        coords, labels = info["mask_coords"], info["mask_labels"]
        clients = torch.nonzero(valid).flatten().tolist()
        rows = [{"round": r, "index": 0, "pc1": float(coords[0, 0]), "pc2": float(coords[0, 1]),
                 "label": int(labels[0]), "malicious": False, "accepted": True, "is_server": True}]
        for j, k in enumerate(clients, start=1):
            rows.append({"round": r, "index": k + 1, "pc1": float(coords[j, 0]), "pc2": float(coords[j, 1]),
                         "label": int(labels[j]), "malicious": bool(self.malicious[k]),
                         "accepted": bool(accepted[k]), "is_server": False})
        self.masks_log.append(*rows)

    # ----- whole run ---------------------------------------------------------------------------
    def run(self, on_round: RoundCallback | None = None) -> Path:
        """Run the remaining rounds; returns the path of rounds.parquet."""
        for r in range(self.start_round, self.cfg.rounds + 1):
            row = self.run_round(r)
            if on_round is not None:
                on_round(row)
        return self.rounds_log.path

    def close(self) -> None:
        self.pool.shutdown()
        for a in self.shard_workers:
            ray.kill(a)
        ray.kill(self.trainer)
        ray.util.remove_placement_group(self.pg)
        if self.started_ray:
            ray.shutdown()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None, resume: bool = False,
                   on_round: RoundCallback | None = None) -> Path:
    """Run one experiment end to end; returns the path of its rounds.parquet."""
    with Simulation(cfg, out, resume) as sim:
        return sim.run(on_round)
