"""The server's side on Ray: the mask-trainer actor, its shard workers, g_0 and SkyMask's mask selector.

One object owns everything the server runs remotely, so the round loop only
asks: "the server's update for this round" and "a mask selector for this
round". The trainer actor sits in the placement-group bundle reserved for it
(a GPU when the cluster has one), compiles the fused mask step while the
client pool starts, and receives the root set's refs with every call (never
as constructor arguments, so Ray can restart it).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import ray
import torch
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..actors import MAX_RESTARTS
from ..clients.training import SGDSettings
from ..config import SkyMaskConfig
from ..layout import Layout
from .masked import auto_shards
from .sharding import sharded_select, start_shard_workers
from .trainer import MaskSelection, MaskTrainer, default_mask_lr, stack_updates

Selector = Callable[[torch.Tensor, torch.Tensor], MaskSelection]


class ServerService:
    """The mask trainer (and its parameter-shard workers) as seen from the driver."""

    def __init__(self, model: str, input_shape: tuple[int, ...], num_classes: int,
                 root: tuple[torch.Tensor, torch.Tensor], cfg: SkyMaskConfig, device: str, layout: Layout,
                 pg: PlacementGroup, seed: int, kernel_rows: int | None, timeout_s: float = 3600.0,
                 start: bool = True) -> None:
        """``start`` False: a run that may never ask the server anything (FedAvg without g_0) starts the
        trainer on first use, not at set-up (one torch process less to start: about a second on 2 cores)."""
        self.cfg, self.seed, self.timeout_s = cfg, seed, timeout_s
        self._trainer_cls = ray.remote(MaskTrainer).options(
            num_cpus=layout.trainer_bundle["CPU"],
            num_gpus=layout.trainer_bundle.get("GPU", 0),
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
        )
        self._trainer_args = (model, input_shape, num_classes, None, None, cfg, device)
        self.root_kw = {"root_x": ray.put(root[0].numpy()), "root_y": ray.put(root[1].numpy())}
        self._actor: "ray.actor.ActorHandle | None" = None
        self._kernels = None
        if start:
            # the mask step and Gram product are chosen (probed, compiled) while the client pool starts: set-up time
            self._kernels = self.trainer.prepare_kernels.remote(kernel_rows) if kernel_rows else None
        self.mask_lr = default_mask_lr(cfg, model)
        self.shard_workers: list = []

    @property
    def trainer(self) -> "ray.actor.ActorHandle":
        """The mask-trainer actor, started on first use."""
        if self._actor is None:
            self._actor = self._trainer_cls.remote(*self._trainer_args)
        return self._actor

    @property
    def started(self) -> bool:
        return self._actor is not None

    def wait_ready(self) -> tuple[str, dict[str, str]]:
        """Block until the trainer is up and its kernels chosen; returns its device (``not started`` for a
        trainer that starts on first use) and the kernel choices."""
        if not self.started:
            return "not started (on first use)", {}
        device = ray.get(self.trainer.device_name.remote(), timeout=600)
        kernels = ray.get(self._kernels, timeout=600) if self._kernels is not None else {}
        return device, kernels

    def server_update(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], sgd: SGDSettings,
                      round_idx: int) -> torch.Tensor:
        """g_0: the server's own local SGD on the root set, from ``w``."""
        g0, _ = ray.get(self.trainer.server_update.remote(
            w.numpy(), {k: b.numpy() for k, b in buffers.items()}, sgd, self.seed, round_idx, **self.root_kw),
            timeout=self.timeout_s)
        return torch.from_numpy(np.array(g0))

    def selector(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], round_idx: int) -> Selector:
        """SkyMask's server work for this round: (updates, g_0) -> MaskSelection, on the trainer (sharded if big)."""

        def select(updates: torch.Tensor, server_update: torch.Tensor) -> MaskSelection:
            bufs = {k: b.numpy() for k, b in buffers.items()}
            n_shards = auto_shards(updates.shape[0] + 1, updates.shape[1], self.cfg)
            if n_shards > 1:
                if len(self.shard_workers) != n_shards:
                    self._kill_shards()
                    self.shard_workers = start_shard_workers(n_shards, self.cfg.shard_memory_gb)
                return sharded_select(self.shard_workers, self.trainer, w, bufs, updates, server_update,
                                      self.cfg, self.mask_lr, self.seed, round_idx, root=self.root_kw)
            ref = ray.put(stack_updates(updates.cpu(), server_update.cpu()).numpy())
            return ray.get(self.trainer.select.remote(w.numpy(), bufs, ref, self.seed, round_idx, **self.root_kw),
                           timeout=self.timeout_s)

        return select

    def memory_mb(self) -> tuple[float, float]:
        """The trainer's (peak RSS, PSS now) in MB."""
        if not self.started:
            return 0.0, 0.0
        return tuple(ray.get(self.trainer.memory_mb.remote(), timeout=600))

    def _kill_shards(self) -> None:
        for a in self.shard_workers:
            ray.kill(a)
        self.shard_workers = []

    def close(self) -> None:
        self._kill_shards()
        if self.started:
            ray.kill(self.trainer)
