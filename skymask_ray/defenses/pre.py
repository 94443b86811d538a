r"""Pre-aggregators: transforms of the N x P update matrix that run before any defense.

Each is a pure function ``(updates, f, generator, **params) -> (mixed, mix)`` registered in
:data:`PRE_AGGREGATORS`: ``mixed = mix @ updates`` (M x P) is what the defense aggregates, and
``mix`` (M x N, rows summing to 1) says how much of each client's update is in each row.

* ``nnm`` (Allouah et al., "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
  Heterogeneity", AISTATS 2023): row i becomes the mean of its N - f nearest neighbours
  (Euclidean, itself included), :math:`y_i = \frac{1}{N-f}\sum_{j \in \mathcal N_i} x_j`;
  M = N and :math:`\text{mix}_{ij} = 1/(N-f)` for :math:`j \in \mathcal N_i`.
* ``bucketing`` (Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
  via Bucketing", ICLR 2022): shuffle the rows with a seeded permutation :math:`\pi` and average
  consecutive buckets of ``bucket_size`` s, :math:`y_j = \frac1s \sum_{i=js+1}^{(j+1)s}
  x_{\pi(i)}`; a last incomplete bucket is averaged over its own members (as ByzFL does).
  M = :math:`\lceil N/s\rceil`.

Both follow ByzFL's definitions (github.com/LPD-EPFL/byzfl, ``aggregators/preaggregators.py``).

Verdicts (what TPR/FPR count), the same for both: the defense judges rows, and a *client* is
accepted iff its own update reaches the aggregate, i.e. it is mixed into at least one accepted
row (:math:`\sum_j \text{mix}_{ji} [\text{row } j \text{ accepted}] > 0`); its weight is its
share of the aggregate, :math:`\sum_j \text{mix}_{ji} w_j`. Under ``nnm`` a client whose own
row is rejected is still accepted when it is among the nearest neighbours of an accepted row
(its update was averaged in), and an attacker is rejected only if no accepted row mixes it in;
under ``bucketing`` every member of an accepted bucket is accepted (a malicious client that
shares an accepted bucket did reach the aggregate, diluted).

In a config: ``defense_params: {pre: nnm}`` or ``{pre: bucketing, bucket_size: 2}`` with any
defense; :class:`~skymask_ray.defenses.base.Defense` strips these keys before its own parameters
are parsed and wraps its ``aggregate`` (see :func:`split_pre`, :func:`pre_aggregate`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..linalg import pairwise_sq_distances
from ..params import bounded, parse_params
from ..registry import Registry
from ..seeding import torch_generator

if TYPE_CHECKING:
    from ..context import DefenseContext

PreAggregator = Callable[..., tuple[torch.Tensor, torch.Tensor]]

PRE_AGGREGATORS: Registry[PreAggregator] = Registry("pre-aggregator")

PRE_KEYS = ("pre", "bucket_size")  # the defense_params keys that belong to the pre-aggregation


@PRE_AGGREGATORS.register("nnm")
def nnm(updates: torch.Tensor, f: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour mixing: each row replaced by the mean of its N - f nearest rows (itself included);
    returns (mixed rows, the N x N mixing matrix)."""
    n = len(updates)
    k = max(1, n - max(int(f), 0))
    d = pairwise_sq_distances(updates).double()
    d.fill_diagonal_(-1.0)  # a row is always its own nearest neighbour, whatever the ties
    neighbours = torch.topk(d, k, dim=1, largest=False).indices
    mix = torch.zeros(n, n, dtype=updates.dtype, device=updates.device)
    mix.scatter_(1, neighbours, 1.0 / k)
    return mix @ updates, mix


@PRE_AGGREGATORS.register("bucketing")
def bucketing(updates: torch.Tensor, f: int, generator: torch.Generator | None = None,
              bucket_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle (``generator``), then average consecutive buckets of ``bucket_size`` rows; returns (mixed rows,
    the M x N mixing matrix)."""
    n = len(updates)
    perm = torch.randperm(n, generator=generator).to(updates.device)
    buckets = perm.split(bucket_size)
    member = torch.zeros(len(buckets), n, dtype=torch.bool, device=updates.device)
    for j, members in enumerate(buckets):
        member[j, members] = True
    mix = member.to(updates.dtype) / member.sum(1, keepdim=True).to(updates.dtype)
    return mix @ updates, mix


@dataclass
class PreParams:
    pre: str | None = None  # a name in PRE_AGGREGATORS (nnm | bucketing) or None
    bucket_size: int | None = bounded(None, ge=1)  # bucketing: rows per bucket (None: 2)

    def validate(self) -> None:
        """pre names a registered pre-aggregator (the registry, not a Literal, lists them); cross-field:
        bucket_size only with pre: bucketing."""
        if self.pre is not None:
            PRE_AGGREGATORS.get(self.pre)  # ConfigError listing the known ones
        if self.bucket_size is not None and self.pre != "bucketing":
            raise ValueError(f"bucket_size is a parameter of pre: bucketing, not of pre: {self.pre!r}")

    def kwargs(self) -> dict[str, Any]:
        return {"bucket_size": self.bucket_size or 2} if self.pre == "bucketing" else {}


def split_pre(params: dict[str, Any] | None, owner: str) -> tuple[dict[str, Any], PreParams | None]:
    """(the defense's own params, the pre-aggregation's or None); bad pre keys are one-line ConfigErrors."""
    params = dict(params or {})
    mine = {k: params.pop(k) for k in PRE_KEYS if k in params}
    if not mine:
        return params, None
    pre = parse_params(PreParams, mine, f"{owner} (pre-aggregation)")
    if pre.pre is None:
        return params, None
    return params, pre


def pre_aggregate(pre: PreParams, updates: torch.Tensor, ctx: "DefenseContext", seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the configured pre-aggregator; the shuffle uses its own stream (the defense's ``seed``, "pre",
    round), so the defense's ``ctx.generator`` draws are the same with or without it."""
    gen = torch_generator(seed, "pre", ctx.round)
    return PRE_AGGREGATORS.get(pre.pre)(updates, ctx.declared_f, gen, **pre.kwargs())


def map_back(mix: torch.Tensor, accepted: torch.Tensor, weights: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows' verdicts as the N clients': accepted (N,) iff mixed into an accepted row, weight (N,) the
    client's share of the aggregate (see the module docstring)."""
    o = mix.to(torch.float64)
    acc = (o.T @ accepted.to(device=o.device, dtype=torch.float64)) > 0
    w = None if weights is None else (o.T @ weights.to(device=o.device, dtype=torch.float64)).to(weights.dtype)
    return acc.to(accepted.device), w


def inner_context(ctx: "DefenseContext", pre: PreParams, rows: int) -> "DefenseContext":
    """The round context the wrapped defense sees: M rows; per-client ids only where rows are clients."""
    ids = ctx.client_ids if pre.pre == "nnm" else None
    return dataclasses.replace(ctx, num_clients=rows, client_ids=ids)


def check_pre(cfg: Any, owner: str) -> Any:
    """``cfg`` with the pre-aggregation keys validated and removed from ``defense_params`` (same object if none)."""
    params = cfg.defense_params or {}
    if not any(k in params for k in PRE_KEYS):
        return cfg
    own, _ = split_pre(params, owner)
    return dataclasses.replace(cfg, defense_params=own)


__all__ = ["PRE_AGGREGATORS", "PRE_KEYS", "PreParams", "bucketing", "check_pre", "inner_context", "map_back",
           "nnm", "pre_aggregate", "split_pre"]
