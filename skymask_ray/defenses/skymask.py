"""SkyMask as a defense: the server's cluster of learned masks decides who is averaged."""

from __future__ import annotations

import torch

from .base import Aggregate, Defense, mean_of, register_defense


@register_defense("skymask")
class SkyMask(Defense):
    r"""SkyMask (Yan et al., "SkyMask: Attack-agnostic Robust Federated Learning
    with Fine-grained Learnable Masks", ECCV 2024, arXiv 2312.12484).

    Masks :math:`m_k` over every client model :math:`w_k = w_t - g_k` and the
    server's :math:`w_0` are trained on the root set through the masked network
    :math:`W = \sum_k \sigma(m_k) w_k / \sum_k \sigma(m_k)`, binarised at the
    threshold, reduced to 2-D by PCA and split by a 2-component GMM; clients in
    the server's component are averaged: :math:`\frac{1}{|B|}\sum_{k\in B} g_k`.

    Fallback (recorded as ``fallback``): if no client shares the server's
    component, apply the server's own update (``skymask.fallback = server``,
    default) or the plain mean (``fedavg``). Mask settings are the
    ``skymask`` section of the config, the work runs where
    ``ctx.mask_selector`` sends it (the mask-trainer actor). With
    ``skymask.select: bic`` the split is kept only if two components fit the
    2-D coordinates better (BIC) than one; otherwise every client is accepted
    and ``info["single_component"]`` is true.
    """

    needs_server_update = True

    def aggregate(self, updates, ctx):
        if ctx.mask_selector is None or ctx.server_update is None:
            raise ValueError("skymask needs the mask trainer and the server's update in the round context")
        sel = ctx.mask_selector(updates, ctx.server_update)
        accepted = torch.tensor(sel.accepted, dtype=torch.bool, device=updates.device)  # a copy: Ray gives read-only arrays
        info = {
            "mask_losses": sel.losses,
            "mask_on_mean": float(sel.on_fraction[1:].mean()),
            "mask_on_server": float(sel.on_fraction[0]),
            "mask_coords": sel.coords,
            "mask_labels": sel.labels,
            "degenerate": sel.degenerate,
            "single_component": sel.single_component,
            **sel.timings,
        }
        if sel.gram is not None:
            info["mask_gram"] = sel.gram
        if accepted.any():
            return Aggregate(mean_of(updates, accepted), accepted, None, info)
        if self.settings.fallback == "fedavg":
            return Aggregate(updates.mean(0), accepted, None, info, fallback=True)
        return Aggregate(ctx.server_update.to(updates.device).clone(), accepted, None, info, fallback=True)
