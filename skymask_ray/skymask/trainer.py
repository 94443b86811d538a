"""The server side of SkyMask: the server's own update and mask training + selection.

:class:`MaskTrainer` is plain Python (tested in-process); the simulation runs
it as a Ray actor that asks for a GPU when the cluster has one. The K x P
state lives in :class:`~skymask_ray.skymask.masked.MaskShard` objects: one
local shard by default, or column shards on other actors
(:mod:`skymask_ray.skymask.sharding`) when N x P exceeds one device's budget.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..clients.training import SGDSettings, train_sequential
from ..config import SkyMaskConfig
from ..kernels import tune_numpy_allocations
from ..linalg import from_readonly
from ..models import ParamSpec, build_model, channels_last, state_restored
from ..seeding import torch_generator
from .masked import MaskShard, Workspace, auto_shards, gram_choice, row_kernels
from .select import select_masks

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


class LocalShards:
    """Column shards held in this process (``n`` = 1 is the unsharded trainer)."""

    def __init__(self, updates: torch.Tensor, w: torch.Tensor, cfg: SkyMaskConfig, lr: float, n: int = 1,
                 workspace: Workspace | None = None) -> None:
        self.bounds = np.linspace(0, updates.shape[1], n + 1).astype(int)
        self.shards = [MaskShard(updates[:, a:b], w[a:b], cfg, lr, workspace=workspace, name=self.shard_name(i))
                       for i, (a, b) in enumerate(zip(self.bounds[:-1], self.bounds[1:]))]

    @staticmethod
    def shard_name(i: int) -> str:
        """Shard ``i``'s prefix in the workspace."""
        return f"{i}/"

    def weighted_average(self) -> torch.Tensor:
        return torch.cat([s.weighted_average() for s in self.shards])

    def step(self, grad_w: torch.Tensor) -> None:
        for s, a, b in zip(self.shards, self.bounds[:-1], self.bounds[1:]):
            s.step(grad_w[a:b])

    def gram(self) -> torch.Tensor:
        return sum(s.gram() for s in self.shards)  # type: ignore[return-value]


STACK_BLOCK_ROWS = 256
"""Clients per block of :func:`stack_updates`' transposing copy. One copy of all N rows walks the
output's contiguous (client) dimension, reading one float from each of N rows P floats apart: a
different page for every read, so past a few hundred clients nearly every read misses the TLB.
Blocks of 256 rows keep the pages being read within its reach: 3.1x faster at N = 2000 and 3.2x at
N = 5000, the same at N = 500 (P = 139,960; ``benchmarks/stack_cost.py``)."""


def stack_updates(updates: torch.Tensor, server_update: torch.Tensor) -> torch.Tensor:
    """The (N+1) x P update matrix: row 0 = g_0 (the server), rows 1.. = g_k (clients).

    Stored coordinate-major (a transposed view of P x (N+1) memory), the layout
    :class:`MaskShard` works in, so the trainer takes it without another copy.
    The transposing copy goes :data:`STACK_BLOCK_ROWS` clients at a time.
    """
    n = updates.shape[0]
    out = torch.empty(updates.shape[1], n + 1, dtype=updates.dtype, device=updates.device).T
    out[0] = server_update.to(updates.device)
    for i in range(0, n, STACK_BLOCK_ROWS):
        out[1 + i : 1 + i + STACK_BLOCK_ROWS] = updates[i : i + STACK_BLOCK_ROWS]
    return out


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
    single_component: bool = False  # skymask.select bic chose one component: everyone accepted
    gram: np.ndarray | None = None  # (N+1, N+1) Gram of the binary masks, only under skymask.keep_gram


class RootLoss:
    """Loss of the network at flat weights W on a root batch, and dL/dW.

    BatchNorm runs in train mode (batch statistics) on a copy of the global
    running statistics, as SPEC section 5 asks. Runs on ``model`` itself (eager
    autograd, conv weights channels-last), markedly faster on CPU than a
    functional call on flat views; the module's own parameters and buffers are
    restored after every call. The gradient is returned on ``device``.
    """

    def __init__(self, model: torch.nn.Module, spec: ParamSpec, buffers: dict[str, torch.Tensor],
                 root: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> None:
        self.model, self.spec, self.buffers, self.root, self.device = channels_last(model), spec, buffers, root, device
        self.params = list(model.parameters())

    def __len__(self) -> int:
        return len(self.root[1])

    def __call__(self, w: torch.Tensor, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        x, y = self.root
        self.model.train()
        with state_restored(self.model, self.spec) as own:
            self.spec.load(self.model, w)
            with torch.no_grad():
                for n, b in self.buffers.items():
                    own[n].copy_(b)
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, self.params)
        # reshape(-1) reads channels-last gradients in logical (ParamSpec) order
        return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads]).to(self.device)


def train_masks(
    shards: Shards,
    loss_grad: Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]],
    n_root: int,
    cfg: SkyMaskConfig,
    generator: torch.Generator,
) -> list[float]:
    """Train the masks on the root set; returns the loss before every step.

    Each step: gather W from the shards, one forward/backward of the masked
    network on a root batch for dL/dW (``loss_grad``), scatter dL/dW back to
    the shards. Early stop at step ``early_stop_step`` if the loss fell by
    less than ``early_stop_delta`` since step 0.
    """
    losses: list[float] = []
    bs = cfg.mask_batch_size or n_root
    for _ in range(cfg.mask_epochs):
        order = torch.randperm(n_root, generator=generator) if bs < n_root else torch.arange(n_root)
        for idx in order.split(bs):
            loss, grad_w = loss_grad(shards.weighted_average(), idx)
            losses.append(loss)
            shards.step(grad_w)
            step = len(losses) - 1
            if step == cfg.early_stop_step and cfg.early_stop_step > 0 and losses[0] - losses[step] < cfg.early_stop_delta:
                return losses
    return losses


def train_and_select(
    shards: Shards,
    loss_grad: Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]],
    n_root: int,
    numel: int,
    cfg: SkyMaskConfig,
    seed: int,
    round_idx: int,
) -> MaskSelection:
    """Mask training, then clustering from the summed Gram matrix; row 0 is the server."""
    t0 = time.perf_counter()
    losses = train_masks(shards, loss_grad, n_root, cfg, torch_generator(seed, "mask", round_idx))
    t1 = time.perf_counter()
    gram = shards.gram().cpu().numpy()
    on = np.diag(gram) / numel  # a mask's bits on = its own inner product
    result = select_masks(gram, seed, cfg, round_idx)
    t2 = time.perf_counter()
    return MaskSelection(
        accepted=result.benign[1:].copy(), coords=result.coords, labels=result.labels, losses=losses,
        on_fraction=on, degenerate=result.degenerate, single_component=result.single_component,
        timings={"t_mask_train": t1 - t0, "t_mask_cluster": t2 - t1}, gram=gram if cfg.keep_gram else None,
    )


class MaskTrainer:
    """Server-side worker: root data, the server's update g_0, mask training and clustering."""

    def __init__(
        self,
        model_name: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        root_x: np.ndarray | None,
        root_y: np.ndarray | None,
        cfg: SkyMaskConfig,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        # Ray pins actors to 1 thread; the trainer runs while client workers idle, so use the node's cores.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        tune_numpy_allocations()
        want_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if device == "cuda" and not want_cuda:
            raise RuntimeError("device 'cuda' requested but CUDA is not available on the mask-trainer node")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.model_name = model_name
        self.model = build_model(model_name, input_shape, num_classes).to(self.device)
        self.spec = ParamSpec.of(self.model)
        self.root: tuple[torch.Tensor, torch.Tensor] | None = None
        if root_x is not None:
            self._use_root(root_x, root_y)
        self.cfg = cfg
        self.lr = default_mask_lr(cfg, model_name)
        self.workspace = Workspace()  # the K x P state's memory, reused round after round

    def _use_root(self, root_x: np.ndarray | None, root_y: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the root set if given, else the one held; as a Ray actor the root comes with every call.

        (Constructor arguments from the object store would break the actor's
        restarts, so the driver passes the root's refs to each method instead.)
        """
        if root_x is not None and root_y is not None:
            self.root = (torch.as_tensor(np.array(root_x)).to(self.device),
                         torch.as_tensor(np.array(root_y)).to(self.device))
        if self.root is None:
            raise RuntimeError("the mask trainer was given no root data")
        return self.root

    def device_name(self) -> str:
        return str(self.device)

    def prepare_kernels(self, rows: int) -> dict[str, str]:
        """Choose (and compile) the mask step and the Gram product for ``rows`` masks now, at set-up.

        The simulation calls it while the client pool starts (set-up, as the
        workers' warm-up is): each choice is probed on this machine or read
        from the probe cache (:mod:`skymask_ray.kernels`). Clustering's imports
        (about a second) go on in a background thread, while round 1's clients
        train. Returns each choice's one-line summary, for the set-up line and
        ``_state/layout.json``.
        """
        from . import select

        threading.Thread(target=select.load_sklearn, name="import-sklearn", daemon=True).start()
        _, step = row_kernels(self.cfg.kernel, self.device.type, rows, self.spec.numel)
        gram = gram_choice(self.device.type, rows)
        # the unsharded state's memory, touched now: first touching 3 x K x P floats took ~2 s of round 1
        if auto_shards(rows, self.spec.numel, self.cfg) == 1:
            MaskShard.reserve(self.workspace, rows, self.spec.numel, self.device, LocalShards.shard_name(0))
        return {"mask_step": step.summary(), "gram": gram.summary()}

    def rss_mb(self) -> float:
        """Peak resident memory of this process (MB)."""
        from ..procfs import rss_mb

        return rss_mb()

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS, PSS now) of this process in MB."""
        from ..procfs import pss_mb, rss_mb

        return rss_mb(), pss_mb()

    def server_update(
        self, w: np.ndarray, buffers: dict[str, np.ndarray], s: SGDSettings, seed: int, round_idx: int,
        root_x: np.ndarray | None = None, root_y: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """g_0 = w - w_0 from local SGD on the root set (same optimiser as the clients)."""
        root = self._use_root(root_x, root_y)
        w_t = torch.as_tensor(np.array(w), device=self.device)
        bufs = {n: torch.as_tensor(np.array(b), device=self.device) for n, b in buffers.items()}
        gen = torch_generator(seed, "server", round_idx)
        upd, out_bufs = train_sequential(self.model, self.spec, w_t, [root], [gen], s, bufs)
        return upd[0].cpu().numpy(), {n: b.cpu().numpy() for n, b in out_bufs[0].items()}

    def loss_grad(self, w: np.ndarray, idx: np.ndarray, buffers: dict[str, np.ndarray],
                  root_x: np.ndarray | None = None, root_y: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """One root-batch loss and dL/dW at W (for parameter-sharded mask training)."""
        root = self._use_root(root_x, root_y)
        bufs = {n: torch.as_tensor(np.array(b), device=self.device) for n, b in buffers.items()}
        loss, g = RootLoss(self.model, self.spec, bufs, root, self.device)(
            torch.as_tensor(np.array(w), device=self.device), torch.as_tensor(np.array(idx)))
        return loss, g.cpu().numpy()

    def n_root(self, root_x: np.ndarray | None = None, root_y: np.ndarray | None = None) -> int:
        return len(self._use_root(root_x, root_y)[1])

    def select(
        self, w: np.ndarray, buffers: dict[str, np.ndarray], stacked: np.ndarray, seed: int, round_idx: int,
        root_x: np.ndarray | None = None, root_y: np.ndarray | None = None,
    ) -> MaskSelection:
        """Train masks for the server and N clients here, binarise, cluster, select.

        ``stacked`` is the (N+1) x P update matrix with the server's g_0 in row 0
        (see :func:`stack_updates`); from the object store it is read in place.
        """
        t0 = time.perf_counter()
        root = self._use_root(root_x, root_y)
        w_t = torch.as_tensor(np.array(w), device=self.device)
        shards = LocalShards(from_readonly(stacked).to(self.device), w_t, self.cfg, self.lr, workspace=self.workspace)
        bufs = {n: torch.as_tensor(np.array(b), device=self.device) for n, b in buffers.items()}
        t1 = time.perf_counter()
        loss = RootLoss(self.model, self.spec, bufs, root, self.device)
        sel = train_and_select(shards, loss, len(loss), self.spec.numel, self.cfg, seed, round_idx)
        sel.timings["t_mask_setup"] = t1 - t0
        return sel
