"""Parameter-sharded SkyMask: the (N+1) x P masks and models split by column over actors.

Each :class:`ShardWorker` actor holds a column range of the model matrix and
of the masks (a :class:`~skymask_ray.skymask.masked.MaskShard`). A step moves
only O(P) data: the shards' slices of W are gathered, the mask trainer
computes dL/dW on the root batch, and each shard gets its slice back. PCA
needs only the (N+1) x (N+1) Gram matrix, summed over shards. Results are the
same as the unsharded trainer's (tested for 1, 2 and 3 shards).
"""

from __future__ import annotations

import os

import numpy as np
import ray
import torch

from ..config import SkyMaskConfig
from ..kernels import tune_numpy_allocations
from ..linalg import from_readonly
from .masked import MaskShard, Workspace
from .trainer import MaskSelection, train_and_select

class ShardWorker:
    """One column range of the mask state, on whatever node Ray placed it."""

    def __init__(self, threads: int | None = None) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        tune_numpy_allocations()
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        self.shard: MaskShard | None = None
        self.workspace = Workspace()  # this shard's K x P state, reused round after round

    def load(self, w: np.ndarray, stacked: np.ndarray, cfg: SkyMaskConfig, lr: float) -> int:
        """Take this shard's columns of the (N+1) x P updates (row 0: the server) and fresh masks."""
        g = from_readonly(stacked).to(self.device)
        self.shard = MaskShard(g, torch.as_tensor(np.array(w), device=self.device), cfg, lr,
                               workspace=self.workspace)
        return g.shape[1]

    def weighted_average(self) -> np.ndarray:
        return self.shard.weighted_average().cpu().numpy()

    def step(self, grad_w: np.ndarray) -> None:
        self.shard.step(torch.as_tensor(np.array(grad_w)))

    def gram(self) -> np.ndarray:
        return self.shard.gram().cpu().numpy()

    def release(self) -> None:
        self.shard = None


class RemoteShards:
    """The :class:`~skymask_ray.skymask.trainer.Shards` protocol over ShardWorker actors."""

    def __init__(self, actors: list, bounds: np.ndarray, timeout_s: float = 3600.0) -> None:
        self.actors, self.bounds, self.timeout_s = actors, bounds, timeout_s

    def _all(self, refs: list) -> list:
        return ray.get(refs, timeout=self.timeout_s)

    def weighted_average(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(self._all([a.weighted_average.remote() for a in self.actors])))

    def step(self, grad_w: torch.Tensor) -> None:
        g = grad_w.detach().cpu().numpy()
        self._all([a.step.remote(g[lo:hi]) for a, lo, hi in zip(self.actors, self.bounds[:-1], self.bounds[1:])])

    def gram(self) -> torch.Tensor:
        return torch.from_numpy(np.sum(self._all([a.gram.remote() for a in self.actors]), axis=0))


def start_shard_workers(n: int, memory_gb: float) -> list:
    """``n`` shard actors, spread over the cluster, each reserving its memory budget."""
    actor = ray.remote(ShardWorker).options(num_cpus=0, memory=int(memory_gb * 1024**3), scheduling_strategy="SPREAD")
    return [actor.remote() for _ in range(n)]


def sharded_select(
    actors: list,
    trainer,
    w: torch.Tensor,
    buffers: dict[str, np.ndarray],
    updates: torch.Tensor,
    server_update: torch.Tensor,
    cfg: SkyMaskConfig,
    lr: float,
    seed: int,
    round_idx: int,
    timeout_s: float = 3600.0,
    root: dict[str, "ray.ObjectRef"] | None = None,
) -> MaskSelection:
    """SkyMask's server work with the mask state split over ``actors``; the trainer computes dL/dW.

    ``root`` ({"root_x": ref, "root_y": ref}) is passed on to the trainer's calls.
    """
    numel = updates.shape[1]
    bounds = np.linspace(0, numel, len(actors) + 1).astype(int)
    w_np, g_np, g0_np = w.cpu().numpy(), updates.cpu().numpy(), server_update.cpu().numpy()
    refs = []
    for a, lo, hi in zip(actors, bounds[:-1], bounds[1:]):
        cols = np.empty((g_np.shape[0] + 1, hi - lo), dtype=np.float32, order="F")  # MaskShard's layout
        cols[0], cols[1:] = g0_np[lo:hi], g_np[:, lo:hi]
        refs.append(a.load.remote(w_np[lo:hi], ray.put(cols), cfg, lr))
        del cols
    ray.get(refs, timeout=timeout_s)
    shards = RemoteShards(actors, bounds, timeout_s)

    def loss_grad(wv: torch.Tensor, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        loss, g = ray.get(trainer.loss_grad.remote(wv.numpy(), idx.numpy(), buffers, **(root or {})),
                          timeout=timeout_s)
        return loss, torch.from_numpy(np.array(g))

    n_root = ray.get(trainer.n_root.remote(**(root or {})), timeout=timeout_s)
    try:
        return train_and_select(shards, loss_grad, n_root, numel, cfg, seed, round_idx)
    finally:
        ray.get([a.release.remote() for a in actors], timeout=timeout_s)
