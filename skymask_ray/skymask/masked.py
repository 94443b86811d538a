r"""The mask-weighted model of SkyMask on stacked tensors, with its coordinate-local gradient.

K = N + 1 models (row 0: the server's) ``w_k = w - g_k`` carry real-valued
mask logits ``m`` (K x P). The masked network's parameters are

.. math:: W_i = \frac{\sum_k \sigma(m_{ki}) w_{ki}}{\sum_k \sigma(m_{ki})}
              = w_i - \bar g_i, \quad
          \bar g_i = \frac{\sum_k \sigma(m_{ki}) g_{ki}}{\sum_k \sigma(m_{ki})},

and the mask gradient is local to coordinate i:

.. math:: \frac{\partial L}{\partial m_{ki}} = \sigma'(m_{ki})
          \frac{w_{ki} - W_i}{\sum_k \sigma(m_{ki})} \frac{\partial L}{\partial W_i}
          = \sigma'(m_{ki}) \frac{\bar g_i - g_{ki}}{\sum_k \sigma(m_{ki})} \frac{\partial L}{\partial W_i}.

So the state is the stacked *updates* (K x P, which the trainer can read
zero-copy from the object store) and the masks; no K x P model matrix is
built. A :class:`MaskShard` holding any column range takes its own step from
the matching slice of dL/dW, which is what lets the state be split by
parameter coordinate over several actors or GPUs with O(P) traffic.
"""

from __future__ import annotations

import torch

from ..config import SkyMaskConfig


def masked_average(masks: torch.Tensor, updates: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W = sum_k sigmoid(m_k) (w - g_k) / sum_k sigmoid(m_k), element-wise."""
    s = torch.sigmoid(masks)
    return w - (s * updates).sum(0) / s.sum(0)


def mask_gradient(masks: torch.Tensor, updates: torch.Tensor, grad_w: torch.Tensor) -> torch.Tensor:
    """dL/dm from dL/dW by the closed form above (no K x P autograd graph)."""
    s = torch.sigmoid(masks)
    total = s.sum(0)
    g_bar = (s * updates).sum(0) / total
    return s * (1 - s) * (g_bar - updates) / total * grad_w


class MaskShard:
    """One column range of the K x P masks and models, with its optimiser.

    The optimiser is torch's own SGD or Adam over the mask tensor; the
    gradient is clamped element-wise to ``mask_grad_clip`` first (the paper's
    code: SGD, lr 1e7, clamp 1e-7, i.e. at most 1 per step).
    """

    def __init__(self, updates: torch.Tensor, w: torch.Tensor, cfg: SkyMaskConfig, lr: float) -> None:
        self.updates = updates  # K x P, row 0 = the server's g_0; only read, never written
        self.w = w
        self.cfg = cfg
        self.masks = torch.full(updates.shape, float(cfg.mask_init), device=updates.device)
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if cfg.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam([self.masks], lr=lr)
        else:
            self.opt = torch.optim.SGD([self.masks], lr=lr)

    @torch.no_grad()
    def weighted_average(self) -> torch.Tensor:
        """This shard's slice of W (sigmoid and sums are kept for the next :meth:`step`)."""
        s = torch.sigmoid(self.masks)
        total = s.sum(0)
        g_bar = (s * self.updates).sum(0).div_(total)
        self._cache = (s, total, g_bar)
        return self.w - g_bar

    @torch.no_grad()
    def step(self, grad_w: torch.Tensor) -> None:
        """One optimiser step from this shard's slice of dL/dW (same formula as :func:`mask_gradient`)."""
        if self._cache is None:
            self.weighted_average()
        s, total, g_bar = self._cache  # type: ignore[misc]
        self._cache = None
        torch.addcmul(s, s, s, value=-1.0, out=s)  # s <- sigma'(m) = s (1 - s), in place
        g = torch.sub(g_bar, self.updates).mul_(s).mul_(grad_w.to(self.masks.device) / total)
        del s
        if self.cfg.mask_grad_clip is not None:
            g.clamp_(-self.cfg.mask_grad_clip, self.cfg.mask_grad_clip)
        self.masks.grad = g
        self.opt.step()
        self.masks.grad = None

    def bits(self) -> torch.Tensor:
        """Binary masks 1[sigmoid(m) > threshold] (K x P_shard, bool)."""
        return torch.sigmoid(self.masks) > self.cfg.threshold

    def gram(self) -> torch.Tensor:
        """This shard's contribution B B^T (K x K, float64) to the Gram matrix of the bits."""
        b = self.bits().to(torch.float32)
        return (b @ b.T).double()

    def on_counts(self) -> torch.Tensor:
        """Number of mask bits on, per model (K,)."""
        return self.bits().sum(1)

    def logit_range(self) -> tuple[float, float]:
        return float(self.masks.min()), float(self.masks.max())
