"""Distance-based selection: krum, multi_krum and bulyan.

All three score clients from one N x N matrix of squared distances
(:func:`skymask_ray.linalg.pairwise_sq_distances`) with the shared
:func:`skymask_ray.linalg.krum_scores`.

References: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Krum,
Multi-Krum); El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
Distributed Learning in Byzantium", ICML 2018 (Bulyan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..linalg import coordinate_blocks, krum_scores, pairwise_sq_distances
from ..params import bounded
from .base import Aggregate, BoundedDefense, DegradeParams, mean_of, register_defense
from .statistics import median_along_rows


def _krum_bound(n: int) -> int:
    """Largest f with N > 2f + 2."""
    return (n - 3) // 2


@register_defense("krum")
class Krum(BoundedDefense):
    r"""Krum (Blanchard et al., NeurIPS 2017): :math:`\mathrm{AGG} = g_{k^*}`,
    :math:`k^* = \arg\min_k \sum_{j \in \mathcal N_k} \|g_k - g_j\|^2` over the :math:`N-f-2`
    nearest neighbours. Assumes :math:`N > 2f + 2`. Accepts only :math:`k^*`.
    """

    assumption = "N > 2f + 2"
    max_f = staticmethod(_krum_bound)

    def aggregate(self, updates, ctx):
        info: dict[str, Any] = {}
        f = self.effective_f(len(updates), ctx.declared_f, info)
        scores = krum_scores(pairwise_sq_distances(updates), f)
        best = int(scores.argmin())
        accepted = torch.zeros(len(updates), dtype=torch.bool, device=updates.device)
        accepted[best] = True
        info["selected"] = best
        return Aggregate(updates[best].clone(), accepted, None, info)


@dataclass
class MultiKrumParams(DegradeParams):
    m: int | None = bounded(None, ge=1)  # updates averaged (None: N - f)


@register_defense("multi_krum")
class MultiKrum(BoundedDefense):
    r"""Multi-Krum (Blanchard et al., NeurIPS 2017): the mean of the :math:`m` updates with the
    lowest Krum scores (:func:`krum_scores`), :math:`m = N - f` by default. Assumes :math:`N > 2f + 2`.
    """

    Params = MultiKrumParams
    assumption = "N > 2f + 2"
    max_f = staticmethod(_krum_bound)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        p = cls.parse(cfg.defense_params)
        if p.m is not None and p.m > cfg.cohort_size:
            raise ConfigError(f"defense 'multi_krum' averages m updates, which needs m <= N; got m={p.m}, N={cfg.cohort_size}")

    def aggregate(self, updates, ctx):
        n = len(updates)
        info: dict[str, Any] = {}
        f = self.effective_f(n, ctx.declared_f, info)
        m = min(self.p.m if self.p.m is not None else n - f, n)
        scores = krum_scores(pairwise_sq_distances(updates), f)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[scores.argsort()[:m]] = True
        info["m"] = m
        return Aggregate(mean_of(updates, accepted), accepted, None, info)


def _step(live: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, direction: int) -> torch.Tensor:
    """Per row, the nearest live sorted position strictly before (-1) or after (+1) ``pos`` (-1 / N if none)."""
    n = live.shape[1]
    pos = pos + direction
    while True:
        inside = (pos >= 0) & (pos < n)
        dead = inside.clone()
        dead[inside] = ~live[rows[inside], pos[inside]]
        if not dead.any():
            return pos
        pos = pos + direction * dead


def bulyan_select(sq_dist: torch.Tensor, f: int, theta: int) -> torch.Tensor:
    """Bulyan's first stage: apply Krum ``theta`` times, each time removing the chosen row.

    Each row's distances are sorted once. With m rows left, row i's Krum score is the sum of its
    first ``k = m - f - 2`` sorted distances to rows still in the set (its window, ending at sorted
    position ``end[i]``). Removing a row and lowering k by one changes each window by one entry,
    so scores are updated in O(N) per round instead of recomputed: O(N^2 log N + theta N) in all.
    Returns the (theta,) chosen indices, in order.
    """
    n = len(sq_dist)
    dev = sq_dist.device
    ds, order = sq_dist.double().sort(dim=1)
    rows = torch.arange(n, device=dev)
    rank = torch.empty_like(order).scatter_(1, order, rows.expand(n, n).contiguous())
    live = torch.ones(n, n, dtype=torch.bool, device=dev)
    live[rows, rank[rows, rows]] = False  # a row is not its own neighbour
    k = min(max(n - f - 2, 1), n - 1)
    counted = live & (live.cumsum(dim=1) <= k)
    score = (ds * counted).sum(dim=1)
    end = torch.where(counted, torch.arange(n, device=dev), -1).max(dim=1).values
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    chosen = []
    for m in range(n, n - theta, -1):
        masked = score.masked_fill(~alive, float("inf"))
        best = masked.min()
        pick = int(torch.nonzero(masked <= best + 1e-9 * best.abs()).min())  # ties: lowest index, as argmin
        chosen.append(pick)
        alive[pick] = False
        r_all = rank[:, pick]
        live[rows, r_all] = False
        idx = torch.nonzero(alive).flatten()
        if idx.numel() == 0:
            break
        r, e = r_all[idx], end[idx]
        was = r <= e  # the removed row was in the window
        score[idx] -= torch.where(was, ds[idx, r], 0.0)
        e = torch.where(was & (r == e), _step(live, idx, e, -1), e)
        k_new = min(max(m - 1 - f - 2, 1), m - 2)
        count = k - was.long()
        shrink, grow = count > k_new, count < k_new
        if shrink.any():
            s_idx = idx[shrink]
            score[s_idx] -= ds[s_idx, e[shrink]]
            e[shrink] = _step(live, s_idx, e[shrink], -1)
        if grow.any():
            g_idx = idx[grow]
            e[grow] = _step(live, g_idx, e[grow], +1)
            score[g_idx] += ds[g_idx, e[grow]]
        end[idx] = e
        k = k_new
    return torch.tensor(chosen, dtype=torch.long, device=dev)


def closest_to_median_mean(selected: torch.Tensor, beta: int, block: int = 2**21) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Bulyan's second stage: per coordinate, the mean of the :math:`\beta` values closest to the
    coordinate-wise median. Returns the (P,) mean and each row's (theta,) count of used values."""
    theta, p = selected.shape
    out = torch.empty(p, dtype=selected.dtype, device=selected.device)
    used = torch.zeros(theta, dtype=torch.long, device=selected.device)
    for cols, t in coordinate_blocks(selected, block):
        med, _ = median_along_rows(t)
        idx = (t - med[:, None]).abs().topk(beta, dim=1, largest=False).indices
        out[cols] = t.gather(1, idx).mean(dim=1)
        used += torch.bincount(idx.flatten(), minlength=theta)
    return out, used


@register_defense("bulyan")
class Bulyan(BoundedDefense):
    r"""Bulyan (El Mhamdi et al., ICML 2018).

    1. Select :math:`\theta = N - 2f` updates by applying Krum :math:`\theta` times, removing the
       chosen update each time.
    2. Per coordinate, average the :math:`\beta = \theta - 2f` selected values closest to the
       coordinate-wise median of the selected set.

    Assumes :math:`N \ge 4f + 3`. ``weights``: each client's share of the averaged values; clients
    never used (all those Krum did not select) count as rejected.
    """

    assumption = "N >= 4f + 3"

    @staticmethod
    def max_f(n: int) -> int:
        return (n - 3) // 4

    def aggregate(self, updates, ctx):
        n, p = updates.shape
        info: dict[str, Any] = {}
        f = self.effective_f(n, ctx.declared_f, info)
        theta, beta = n - 2 * f, n - 4 * f
        chosen = bulyan_select(pairwise_sq_distances(updates), f, theta)
        agg, used = closest_to_median_mean(updates[chosen], beta)
        weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
        weights[chosen] = used.to(updates.dtype) / (p * beta)
        info.update(theta=theta, beta=beta, selected=chosen.tolist())
        return Aggregate(agg, weights > 0, weights, info)
