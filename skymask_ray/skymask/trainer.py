"""The server side of SkyMask: the server's own update and mask training + selection.

:class:`MaskTrainer` is plain Python (tested in-process); the simulation runs
it as a Ray actor that asks for a GPU when the cluster has one. The K x P
state lives in :class:`~skymask_ray.skymask.masked.MaskShard` objects: one
local shard by default, or column shards on other actors
(:mod:`skymask_ray.skymask.sharding`) when N x P exceeds one device's budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..clients.training import SGDSettings, train_sequential
from ..config import SkyMaskConfig
from ..linalg import from_readonly
from ..models import ParamSpec, build_model
from ..seeding import torch_generator
from .masked import MaskShard
from .select import cluster_from_gram

log = logging.getLogger(__name__)


def default_mask_lr(cfg: SkyMaskConfig, model_name: str) -> float:
    """The paper code's rates: SGD 1e7 (1e8 for resnet20); Adam 0.1."""
    if cfg.mask_lr is not None:
        return cfg.mask_lr
    if cfg.optimizer == "adam":
        return 0.1
    return 1e8 if model_name == "resnet20" else 1e7


class Shards(Protocol):
    """A K x P mask state split by columns, local or on actors."""

    def weighted_average(self) -> torch.Tensor: ...
    def step(self, grad_w: torch.Tensor) -> None: ...
    def gram(self) -> torch.Tensor: ...
    def on_counts(self) -> torch.Tensor: ...


class LocalShards:
    """Column shards held in this process (``n`` = 1 is the unsharded trainer)."""

    def __init__(self, models: torch.Tensor, cfg: SkyMaskConfig, lr: float, n: int = 1) -> None:
        self.bounds = np.linspace(0, models.shape[1], n + 1).astype(int)
        self.shards = [MaskShard(models[:, a:b].contiguous(), cfg, lr) for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def weighted_average(self) -> torch.Tensor:
        return torch.cat([s.weighted_average() for s in self.shards])

    def step(self, grad_w: torch.Tensor) -> None:
        for s, a, b in zip(self.shards, self.bounds[:-1], self.bounds[1:]):
            s.step(grad_w[a:b])

    def gram(self) -> torch.Tensor:
        return sum(s.gram() for s in self.shards)  # type: ignore[return-value]

    def on_counts(self) -> torch.Tensor:
        return sum(s.on_counts() for s in self.shards)  # type: ignore[return-value]


@dataclass
class MaskSelection:
    """What SkyMask's server-side work found in one round (clients indexed 0..N-1)."""

    accepted: np.ndarray  # (N,) bool: client in the server's cluster
    coords: np.ndarray  # (N+1, 2) PCA coordinates, row 0 = server
    labels: np.ndarray  # (N+1,) GMM component
    losses: list[float]
    on_fraction: np.ndarray  # (N+1,) fraction of mask bits on
    degenerate: bool
    timings: dict[str, float] = field(default_factory=dict)


def train_masks(
    shards: Shards,
    model: torch.nn.Module,
    spec: ParamSpec,
    buffers: dict[str, torch.Tensor],
    root: tuple[torch.Tensor, torch.Tensor],
    cfg: SkyMaskConfig,
    generator: torch.Generator,
    device: torch.device,
) -> list[float]:
    """Train the masks on the root set; returns the loss before every step.

    Each step: gather W from the shards, one forward/backward of the masked
    network on a root batch for dL/dW (BatchNorm in train mode on a copy of the
    global statistics), scatter dL/dW back. Early stop at step
    ``early_stop_step`` if the loss fell by less than ``early_stop_delta``.
    """
    x, y = root
    model.train()
    losses: list[float] = []
    bs = cfg.mask_batch_size or len(y)
    for _ in range(cfg.mask_epochs):
        order = torch.randperm(len(y), generator=generator) if bs < len(y) else torch.arange(len(y))
        for idx in order.split(bs):
            w = shards.weighted_average().to(device).requires_grad_(True)
            bufs = {n: b.clone() for n, b in buffers.items()}
            out = functional_call(model, (spec.unflatten(w), bufs), (x[idx],))
            loss = F.cross_entropy(out, y[idx])
            (grad_w,) = torch.autograd.grad(loss, w)
            losses.append(float(loss.detach()))
            shards.step(grad_w)
            step = len(losses) - 1
            if step == cfg.early_stop_step and cfg.early_stop_step > 0 and losses[0] - losses[step] < cfg.early_stop_delta:
                return losses
    return losses


class MaskTrainer:
    """Server-side worker: root data, the server's update g_0, mask training and clustering."""

    def __init__(
        self,
        model_name: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        root_x: np.ndarray,
        root_y: np.ndarray,
        cfg: SkyMaskConfig,
        device: str = "auto",
        threads: int | None = None,
        shard_factory: Any = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        want_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not want_cuda:
            raise RuntimeError("device 'cuda' requested but CUDA is not available on the mask-trainer node")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.model_name = model_name
        self.model = build_model(model_name, input_shape, num_classes).to(self.device)
        self.spec = ParamSpec.of(self.model)
        self.root = (torch.as_tensor(np.array(root_x)).to(self.device), torch.as_tensor(np.array(root_y)).to(self.device))
        self.cfg = cfg
        self.lr = default_mask_lr(cfg, model_name)
        self.shard_factory = shard_factory

    def device_name(self) -> str:
        return str(self.device)

    def rss_mb(self) -> float:
        """Peak resident memory of this process (MB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def server_update(
        self, w: np.ndarray, buffers: dict[str, np.ndarray], s: SGDSettings, seed: int, round_idx: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """g_0 = w - w_0 from local SGD on the root set (same optimiser as the clients)."""
        w_t = torch.as_tensor(np.array(w), device=self.device)
        bufs = {n: torch.as_tensor(np.array(b), device=self.device) for n, b in buffers.items()}
        gen = torch_generator(seed, "server", round_idx)
        upd, out_bufs = train_sequential(self.model, self.spec, w_t, [self.root], [gen], s, bufs)
        return upd[0].cpu().numpy(), {n: b.cpu().numpy() for n, b in out_bufs[0].items()}

    def select(
        self,
        w: np.ndarray,
        buffers: dict[str, np.ndarray],
        updates: np.ndarray,
        server_update: np.ndarray,
        seed: int,
        round_idx: int,
        shards: int = 1,
    ) -> MaskSelection:
        """Train masks for the server (row 0) and N clients, binarise, cluster, select."""
        t0 = time.perf_counter()
        w_t = torch.as_tensor(np.array(w), device=self.device)
        g = from_readonly(updates).to(self.device)
        models = torch.empty(g.shape[0] + 1, g.shape[1], device=self.device)
        models[0] = w_t - torch.as_tensor(np.array(server_update), device=self.device)
        torch.sub(w_t[None], g, out=models[1:])
        del g
        if self.shard_factory is not None and shards > 1:
            state: Shards = self.shard_factory(models, self.cfg, self.lr, shards)
        else:
            state = LocalShards(models, self.cfg, self.lr, max(shards, 1))
        bufs = {n: torch.as_tensor(np.array(b), device=self.device) for n, b in buffers.items()}
        gen = torch_generator(seed, "mask", round_idx)
        t1 = time.perf_counter()
        losses = train_masks(state, self.model, self.spec, bufs, self.root, self.cfg, gen, self.device)
        t2 = time.perf_counter()
        gram = state.gram().cpu().numpy()
        on = (state.on_counts().double() / self.spec.numel).cpu().numpy()
        del state, models
        result = cluster_from_gram(gram, seed=int(seed + round_idx))
        t3 = time.perf_counter()
        return MaskSelection(
            accepted=result.benign[1:].copy(),
            coords=result.coords,
            labels=result.labels,
            losses=losses,
            on_fraction=on,
            degenerate=result.degenerate,
            timings={"t_mask_setup": t1 - t0, "t_mask_train": t2 - t1, "t_mask_cluster": t3 - t2},
        )
