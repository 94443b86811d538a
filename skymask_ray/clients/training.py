"""Local SGD of many clients from one global model, as pure functions on tensors.

Two paths compute the same thing (tested to 1e-5):

* :func:`train_sequential` trains the clients one after another;
* :func:`train_vmap` trains a chunk of clients at once with
  ``torch.func.vmap(grad(loss))`` over stacked flat parameters. Clients with
  fewer samples or steps are padded with zero-weight samples, so a padded step
  has exactly the gradient of the client's real mini-batch.

Every client draws its mini-batch order from its own ``torch.Generator``, so the
result does not depend on which path, worker or order trained it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..models import ParamSpec, channels_last, state_restored


@dataclass(frozen=True)
class SGDSettings:
    """What one client's local training needs to know."""

    lr: float
    batch_size: int
    epochs: int = 1
    steps: int | None = None  # fixed number of steps (cycling epochs) instead of epochs
    grad_clip: float | None = None  # element-wise clamp of every gradient coordinate


def batch_plan(n: int, s: SGDSettings, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches of one client: shuffled epochs split into batches (last one partial).

    With ``s.steps`` set, epochs are drawn until that many batches exist.
    """
    if n == 0:
        return []
    batches: list[torch.Tensor] = []
    epoch = 0
    while True:
        if s.steps is None and epoch >= s.epochs:
            return batches
        perm = torch.randperm(n, generator=generator)
        for b in perm.split(s.batch_size):
            if s.steps is not None and len(batches) >= s.steps:
                return batches
            batches.append(b)
        epoch += 1


def num_steps(n: int, s: SGDSettings) -> int:
    """How many SGD steps :func:`batch_plan` gives a client with ``n`` samples."""
    if n == 0:
        return 0
    if s.steps is not None:
        return s.steps
    return s.epochs * -(-n // s.batch_size)


def make_loss(model: nn.Module, spec: ParamSpec) -> Callable[..., torch.Tensor]:
    """Weighted mean cross-entropy of ``model`` at flat parameters ``flat``.

    ``weight`` is 1 for real samples and 0 for padding; the mean is over real
    ones. ``buffers`` (BatchNorm statistics) are an explicit input because
    train-mode BatchNorm updates them in place, which torch.func allows only
    for inputs, not for captured tensors.
    """

    def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
             buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(model, (spec.unflatten(flat), buffers), (x,))
        per_sample = F.cross_entropy(out, y, reduction="none")
        return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)

    return loss


def _sgd_step(flat: torch.Tensor, g: torch.Tensor, s: SGDSettings) -> torch.Tensor:
    if s.grad_clip is not None:
        g = g.clamp(-s.grad_clip, s.grad_clip)
    return flat - s.lr * g


def train_sequential(
    model: nn.Module,
    spec: ParamSpec,
    w0: torch.Tensor,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    generators: list[torch.Generator],
    s: SGDSettings,
    buffers: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Train each client in turn; returns updates ``w0 - w_k`` (K x P) and each client's buffers.

    Runs on ``model`` itself (eager autograd, conv weights channels-last), which is
    markedly faster on CPU than a functional call on flat views; the module's own
    parameters and buffers are restored afterwards. ``buffers`` (BatchNorm
    statistics) are every client's starting point; ``None`` means the module's own.
    """
    model.train()
    channels_last(model)
    params = list(model.parameters())
    updates = torch.empty(len(data), spec.numel, dtype=w0.dtype, device=w0.device)
    out_buffers = []
    with state_restored(model, spec) as own:
        start = {n: b.detach().clone() for n, b in own.items()} if buffers is None else buffers
        for k, ((x, y), gen) in enumerate(zip(data, generators)):
            spec.load(model, w0)
            with torch.no_grad():
                for n, b in start.items():
                    own[n].copy_(b)
            for idx in batch_plan(len(y), s, gen):
                for p in params:
                    p.grad = None
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                with torch.no_grad():
                    for p in params:
                        g = p.grad if s.grad_clip is None else p.grad.clamp_(-s.grad_clip, s.grad_clip)
                        p.sub_(g, alpha=s.lr)
            updates[k] = w0 - spec.flatten(model).to(w0.dtype)
            out_buffers.append({n: own[n].detach().clone() for n in start})
    return updates, out_buffers


def train_vmap(
    model: nn.Module,
    spec: ParamSpec,
    w0: torch.Tensor,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    generators: list[torch.Generator],
    s: SGDSettings,
    chunk: int = 32,
) -> torch.Tensor:
    """Train clients ``chunk`` at a time with one vmapped gradient per step; returns K x P updates.

    Models with buffers (BatchNorm) are not supported here: use the sequential path.
    """
    if any(True for _ in model.buffers()):
        raise ValueError("train_vmap does not support models with buffers (BatchNorm); use train_sequential")
    model.train()
    device = w0.device
    g_fn = vmap(grad(make_loss(model, spec)), in_dims=(0, 0, 0, 0, None))
    updates = torch.empty(len(data), spec.numel, dtype=w0.dtype, device=device)
    plans = [batch_plan(len(y), s, g) for (_, y), g in zip(data, generators)]
    for start in range(0, len(data), chunk):
        ks = range(start, min(start + chunk, len(data)))
        steps = max((len(plans[k]) for k in ks), default=0)
        flat = w0.expand(len(ks), -1).clone()
        if steps:
            xs = torch.cat([data[k][0] for k in ks])
            ys = torch.cat([data[k][1] for k in ks])
            offsets = torch.tensor([0] + [len(data[k][1]) for k in ks][:-1], device=device).cumsum(0)
            idx = torch.zeros(len(ks), steps, s.batch_size, dtype=torch.long, device=device)
            wt = torch.zeros(len(ks), steps, s.batch_size, device=device)
            for i, k in enumerate(ks):
                for t, b in enumerate(plans[k]):
                    idx[i, t, : len(b)] = b.to(device) + offsets[i]
                    wt[i, t, : len(b)] = 1.0
            for t in range(steps):
                flat = _sgd_step(flat, g_fn(flat, xs[idx[:, t]], ys[idx[:, t]], wt[:, t], {}), s)
        updates[start : start + len(ks)] = w0 - flat
    return updates


def client_mode(client_exec: str, device_type: str, has_buffers: bool) -> str:
    """How a worker trains its clients: ``client_exec`` if set, else vmap on a GPU and sequential on a CPU.

    ``auto``'s rule is a measured default, not a probe: the two paths agree to
    1e-5, not bit for bit, so a per-machine choice would make a run's rows depend
    on the machine. ``benchmarks/speed_guard.py`` measures both paths on the
    running machine and flags a CPU where vmap is much faster. BatchNorm
    models (buffers) always train sequentially.
    """
    if has_buffers:
        return "sequential"
    if client_exec != "auto":
        return client_exec
    return "vmap" if device_type == "cuda" else "sequential"


def client_generator(seed: int, round_idx: int, client: int) -> torch.Generator:
    """The client's own random stream for this round (independent of scheduling)."""
    from ..seeding import child_seed

    return torch.Generator().manual_seed(child_seed(seed, "client", round_idx, client))
