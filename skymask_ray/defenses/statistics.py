"""Robust statistics of the update matrix: median, trimmed_mean, geomed and centered_clipping.

Coordinate-wise rules (median, trimmed mean) reject no client outright; they
report as ``weights`` each client's share of the coordinate values that enter
the aggregate, and a client whose values never enter it counts as rejected.

References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018 (median, trimmed
mean); Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated
Learning", IEEE TSP 2022 (geomed / RFA); Karimireddy, He, Jaggi, "Learning
from History for Byzantine Robust Optimization", ICML 2021 (centered clipping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..linalg import coordinate_blocks, pairwise_sq_distances
from ..params import bounded
from .base import (
    Aggregate,
    BoundedDefense,
    DegradeParams,
    Defense,
    distances_to,
    register_defense,
)


def median_along_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median of each row of a coordinate-major block ``t`` (P' x N), mean of the two middle values for even N.

    Returns the (P',) medians and the (P', 1 or 2) client indices that supplied them.
    """
    n = t.shape[1]
    v, i = t.topk(n // 2 + 1, dim=1, largest=False, sorted=True)
    if n % 2:
        return v[:, -1], i[:, -1:]
    return (v[:, -2] + v[:, -1]) / 2, i[:, -2:]


def coordinate_median(updates: torch.Tensor, block: int = 2**21) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Coordinate-wise median :math:`\mathrm{med}_k\, g_{k,i}` (mean of the two middle values for even N).

    Returns the (P,) median and the (N,) share of median values each client supplied.
    Works in coordinate-major blocks of ``block`` elements so temporaries stay bounded.
    """
    n, p = updates.shape
    med = torch.empty(p, dtype=updates.dtype, device=updates.device)
    counts = torch.zeros(n, dtype=torch.long, device=updates.device)
    for cols, t in coordinate_blocks(updates, block):
        med[cols], idx = median_along_rows(t)
        counts += torch.bincount(idx.flatten(), minlength=n)
    share = counts.to(updates.dtype) / counts.sum()
    return med, share


def trimmed_mean(updates: torch.Tensor, beta: int, block: int = 2**21) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Coordinate-wise trimmed mean: drop the :math:`\beta` largest and :math:`\beta` smallest values
    of every coordinate and average the other :math:`N - 2\beta`.

    Returns the (P,) trimmed mean and the (N,) share of kept values each client supplied.
    """
    n, p = updates.shape
    if not 0 <= 2 * beta < n:
        raise ValueError(f"trimmed mean needs 0 <= 2*beta < N, got beta={beta}, N={n}")
    if beta == 0:
        return updates.mean(dim=0), torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
    out = torch.empty(p, dtype=updates.dtype, device=updates.device)
    trimmed = torch.zeros(n, dtype=torch.long, device=updates.device)
    for cols, t in coordinate_blocks(updates, block):
        hi = t.topk(beta, dim=1).indices
        t.scatter_(1, hi, float("inf"))
        lo = t.topk(beta, dim=1, largest=False).indices
        t.scatter_(1, hi, 0.0).scatter_(1, lo, 0.0)
        out[cols] = t.sum(dim=1) / (n - 2 * beta)
        trimmed += torch.bincount(torch.cat([hi.flatten(), lo.flatten()]), minlength=n)
    share = (p - trimmed).to(updates.dtype) / (p * (n - 2 * beta))
    return out, share


@register_defense("median")
class Median(Defense):
    r"""Coordinate-wise median (Yin et al., ICML 2018): :math:`\mathrm{AGG}_i = \mathrm{med}_k\, g_{k,i}`.

    ``weights``: each client's share of the median values; share 0 counts as rejected.
    """

    def aggregate(self, updates, ctx):
        med, share = coordinate_median(updates)
        return Aggregate(med, share > 0, share)


@dataclass
class TrimmedMeanParams(DegradeParams):
    beta: int | None = bounded(None, ge=0)  # values trimmed at each end of every coordinate (None: f)


@register_defense("trimmed_mean")
class TrimmedMean(BoundedDefense):
    r"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    :math:`\mathrm{AGG}_i = \frac{1}{N-2\beta}\sum_{j=\beta+1}^{N-\beta} g_{(j),i}` with
    :math:`g_{(1),i} \le \dots \le g_{(N),i}` and :math:`\beta = f` by default.
    Assumes :math:`\beta < N/2`. ``weights``: each client's share of the kept values.
    """

    Params = TrimmedMeanParams
    assumption = "f < N/2 (beta = f values trimmed at each end must leave at least one)"

    @staticmethod
    def max_f(n: int) -> int:
        return (n - 1) // 2

    @classmethod
    def f_of(cls, p: Any, f: int) -> int:
        return f if p.beta is None else p.beta

    @classmethod
    def f_label(cls, p: Any) -> str:
        return "f" if p.beta is None else "beta"

    def aggregate(self, updates, ctx):
        info: dict[str, Any] = {}
        beta = self.effective_f(len(updates), ctx.declared_f, info)
        mean, share = trimmed_mean(updates, beta)
        info["beta"] = beta
        return Aggregate(mean, share > 0, share, info)


@dataclass
class GeoMedParams:
    maxiter: int = bounded(100, ge=1)
    eps: float = bounded(1e-6, gt=0)  # smoothing nu: distances below it count as nu
    ftol: float = bounded(1e-7, ge=0)  # stop when the objective's relative change is below it


def geometric_median_weights(
    sq_dist: torch.Tensor, maxiter: int = 100, eps: float = 1e-6, ftol: float = 1e-7
) -> tuple[torch.Tensor, int]:
    r"""Smoothed Weiszfeld (RFA) on the pairwise squared distances :math:`D` of the points.

    The iterate stays an affine combination :math:`v = \sum_k c_k g_k` (:math:`\sum_k c_k = 1`), so
    :math:`\|v - g_j\|^2 = (Dc)_j - \tfrac12 c^\top D c` needs no pass over P. Each step
    :math:`\beta_k = 1/\max(\nu, \|v - g_k\|)`, :math:`c = \beta / \sum_k \beta_k`, starting from the mean.
    Returns the final weights :math:`c` (float64) and the number of steps.
    """
    d = sq_dist.double()
    n = len(d)
    c = torch.full((n,), 1.0 / n, dtype=torch.float64, device=d.device)
    prev = None
    steps = 0
    for steps in range(1, maxiter + 1):
        q = d @ c
        dist = (q - 0.5 * (c @ q)).clamp_min(0.0).sqrt()
        obj = float(dist.mean())
        beta = 1.0 / dist.clamp_min(eps)
        c = beta / beta.sum()
        if prev is not None and abs(prev - obj) <= ftol * max(obj, 1e-30):
            break
        prev = obj
    return c, steps


@register_defense("geomed")
class GeoMed(Defense):
    r"""Geometric median by smoothed Weiszfeld, as in RFA (Pillutla et al., IEEE TSP 2022).

    :math:`\mathrm{AGG} = \arg\min_v \sum_k \max(\nu, \|v - g_k\|)`, computed as
    :math:`v = \sum_k c_k g_k` with :math:`c_k \propto 1/\max(\nu, \|v - g_k\|)` iterated to a fixed
    point (see :func:`geometric_median_weights`). ``weights`` are the final :math:`c_k`; a client
    counts as rejected only if its weight underflows to 0.
    """

    Params = GeoMedParams

    def aggregate(self, updates, ctx):
        c, steps = geometric_median_weights(pairwise_sq_distances(updates), self.p.maxiter, self.p.eps, self.p.ftol)
        weights = c.to(updates.dtype)
        return Aggregate(weights @ updates, weights > 0, weights, {"weiszfeld_steps": steps})


@dataclass
class CenteredClippingParams:
    tau: float = bounded(10.0, gt=0)  # clipping radius
    iterations: int = bounded(1, ge=1)  # clipping iterations L per round


@register_defense("centered_clipping")
class CenteredClipping(Defense):
    r"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021).

    Starting from the previous round's aggregate :math:`v_0` (zero in the first round), repeat
    :math:`L` times :math:`v \leftarrow v + \frac1N \sum_k (g_k - v)\min\!\left(1, \frac{\tau}{\|g_k - v\|}\right)`.
    Every step moves :math:`v` by at most :math:`\tau`. State: the last aggregate.
    ``weights``: each client's final clipping factor over N; nobody is rejected.
    """

    Params = CenteredClippingParams

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.center: torch.Tensor | None = None

    def aggregate(self, updates, ctx):
        n = len(updates)
        v = torch.zeros_like(updates[0]) if self.center is None else self.center.to(updates.device, updates.dtype)
        for _ in range(self.p.iterations):
            scale = (self.p.tau / distances_to(updates, v).clamp_min(1e-12)).clamp(max=1.0)
            v = v + (scale @ updates - scale.sum() * v) / n
        self.center = v.detach().clone()
        weights = scale / n
        return Aggregate(v, weights > 0, weights, {"clipped": int((scale < 1).sum())})

    def state_dict(self) -> dict[str, Any]:
        return {} if self.center is None else {"center": self.center.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state.get("center")
