"""The core attacks: none, label_flip (data), lie and min_max (model poisoning)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch

from ..linalg import pairwise_distances
from .base import Attack, benign_stats, register_attack

if TYPE_CHECKING:
    from ..context import RoundContext


@register_attack("none")
class NoAttack(Attack):
    """No attack: malicious clients behave honestly (a control)."""


@register_attack("label_flip")
class LabelFlip(Attack):
    r"""Label flipping: malicious clients train on :math:`y \to C-1-y`.

    Reference: Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", USENIX Security 2020 (label flipping baseline).
    """

    def poison_data(self, x, y, generator):
        return x, (self.num_classes - 1) - y


@dataclass
class LieParams:
    z: float | None = None  # None: the paper's z from N and f


@register_attack("lie")
class Lie(Attack):
    r"""A Little Is Enough (Baruch et al., NeurIPS 2019).

    Every malicious update is :math:`\mu - z\sigma` with :math:`\mu, \sigma` the
    per-coordinate mean and standard deviation of the benign updates and
    :math:`s = \lfloor N/2 + 1\rfloor - f`, :math:`z = \Phi^{-1}((N - s)/N)`.
    """

    Params = LieParams
    trains = False

    @staticmethod
    def paper_z(n: int, f: int) -> float:
        s = math.floor(n / 2 + 1) - f
        q = min(max((n - s) / n, 1e-6), 1 - 1e-6)
        return NormalDist().inv_cdf(q)

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "RoundContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        _, mu, sigma = benign_stats(updates, malicious)
        z = self.p.z if self.p.z is not None else self.paper_z(len(updates), int(malicious.sum()))
        out = updates.clone()
        out[malicious] = mu - z * sigma
        return out


@dataclass
class MinMaxParams:
    deviation: str = "unit_vec"  # unit_vec | sign | std
    gamma_init: float = 10.0
    tol: float = 1e-5

    def validate(self) -> None:
        if self.deviation not in ("unit_vec", "sign", "std"):
            raise ValueError(f"deviation must be unit_vec, sign or std, got {self.deviation!r}")


def deviation_vector(kind: str, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The perturbation direction d of Shejwalkar & Houmansadr."""
    if kind == "unit_vec":
        return mu / mu.norm().clamp(min=1e-12)
    if kind == "sign":
        return torch.sign(mu)
    return sigma


def max_gamma(ok, gamma_init: float, tol: float) -> float:
    """Largest gamma in [0, inf) with ok(gamma) true, by the paper's halving search."""
    gamma, step, best = gamma_init, gamma_init / 2, 0.0
    while step > tol:
        if ok(gamma):
            best = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return best


@register_attack("min_max")
class MinMax(Attack):
    r"""Min-Max (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

    Malicious update :math:`\mu - \gamma d`, with the largest :math:`\gamma` such
    that :math:`\max_i \|\mu - \gamma d - g_i\| \le \max_{i,j}\|g_i - g_j\|`
    over benign updates :math:`g_i`.
    """

    Params = MinMaxParams
    trains = False

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "RoundContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        benign, mu, sigma = benign_stats(updates, malicious)
        d = deviation_vector(self.p.deviation, mu, sigma)
        bound = pairwise_distances(benign).max()

        def ok(gamma: float) -> bool:
            return bool(pairwise_distances((mu - gamma * d)[None], benign).max() <= bound)

        gamma = max_gamma(ok, self.p.gamma_init, self.p.tol)
        out = updates.clone()
        out[malicious] = mu - gamma * d
        return out
