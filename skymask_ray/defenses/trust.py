"""Averaging and root-data trust defenses: fedavg and FLTrust."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Aggregate, Defense, register_defense


@register_defense("fedavg")
class FedAvg(Defense):
    r"""Federated averaging (McMahan et al., AISTATS 2017): :math:`\bar g = \frac1N\sum_k g_k`.

    Accepts everyone; no robustness (the baseline every attack should break).
    """

    rejects = False

    def aggregate(self, updates, ctx):
        return Aggregate(updates.mean(dim=0), torch.ones(len(updates), dtype=torch.bool, device=updates.device))


@register_defense("fltrust")
class FLTrust(Defense):
    r"""FLTrust (Cao et al., NDSS 2021).

    With the server's root-data update :math:`g_0`: trust
    :math:`t_k = \mathrm{ReLU}(\cos(g_k, g_0))`, each :math:`g_k` rescaled to
    :math:`\|g_0\|`, aggregate :math:`\sum_k t_k \frac{\|g_0\|}{\|g_k\|} g_k / \sum_k t_k`.
    Clients with trust 0 count as rejected. If every trust is 0 the aggregate
    is zero (no step) and the round is marked as a fallback.
    """

    needs_server_update = True

    def aggregate(self, updates, ctx):
        g0 = ctx.server_update
        if g0 is None:
            raise ValueError("fltrust needs the server's update on the root dataset")
        g0 = g0.to(updates.device)
        norms, g0_norm = updates.norm(dim=1).clamp(min=1e-12), g0.norm().clamp(min=1e-12)
        trust = F.relu((updates @ g0) / (norms * g0_norm))  # ReLU(cos), without an N x P temporary
        coef = trust * (g0_norm / norms)  # trust times the rescaling to |g_0|
        total = trust.sum()
        accepted = trust > 0
        if total <= 0:
            return Aggregate(torch.zeros_like(g0), accepted, trust, {"trust_sum": 0.0}, fallback=True)
        return Aggregate(coef @ updates / total, accepted, trust, {"trust_sum": float(total)})
