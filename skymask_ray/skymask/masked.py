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
from ..linalg import column_blocks


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

    The gradient is clamped element-wise to ``mask_grad_clip`` (the paper's
    code: SGD, lr 1e7, clamp 1e-7, i.e. at most 1 per step). SGD (the paper's)
    is applied in place, block by block: every pass works on a cache-sized
    column block, so the only K x P arrays are the masks and the (read-only)
    updates, and a step streams each of them about twice instead of building
    five K x P temporaries. Adam uses torch's optimiser on a K x P gradient.
    Column sums over K are matrix-vector products (BLAS over strided blocks).
    """

    def __init__(self, updates: torch.Tensor, w: torch.Tensor, cfg: SkyMaskConfig, lr: float,
                 block: int | None = None) -> None:
        self.updates = updates  # K x P, row 0 = the server's g_0; only read, never written
        self.w = w
        self.cfg = cfg
        self.lr = lr
        self.masks = torch.full(updates.shape, float(cfg.mask_init), device=updates.device)
        k, p = updates.shape
        # cache-sized blocks: one K x block float32 temporary is ~8 MB (``block`` columns if given)
        self.blocks = column_blocks(k, p, budget=k * block) if block else column_blocks(k, p, 2**21, min_width=512)
        self._ones = torch.ones(1, updates.shape[0], device=updates.device)
        self._sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self.opt = torch.optim.Adam([self.masks], lr=lr) if cfg.optimizer == "adam" else None

    def _colsum(self, x: torch.Tensor) -> torch.Tensor:
        return (self._ones @ x)[0]

    @torch.no_grad()
    def weighted_average(self) -> torch.Tensor:
        """This shard's slice of W; the column sums are kept for the next :meth:`step`."""
        p = self.updates.shape[1]
        total = torch.empty(p, device=self.masks.device)
        g_bar = torch.empty(p, device=self.masks.device)
        for c in self.blocks:
            s = torch.sigmoid(self.masks[:, c])
            total[c] = self._colsum(s)
            g_bar[c] = self._colsum(s.mul_(self.updates[:, c]))
        g_bar.div_(total)
        self._sums = (total, g_bar)
        return self.w - g_bar

    @torch.no_grad()
    def step(self, grad_w: torch.Tensor) -> None:
        """One optimiser step from this shard's slice of dL/dW (same formula as :func:`mask_gradient`)."""
        if self._sums is None:
            self.weighted_average()
        total, g_bar = self._sums  # type: ignore[misc]
        self._sums = None
        scale = grad_w.to(self.masks.device) / total
        clip = self.cfg.mask_grad_clip
        full = torch.empty_like(self.masks) if self.opt is not None else None
        for c in self.blocks:
            m = self.masks[:, c]
            s = torch.sigmoid(m)
            torch.addcmul(s, s, s, value=-1.0, out=s)  # sigma'(m) = s (1 - s)
            g = torch.sub(g_bar[c], self.updates[:, c]).mul_(s).mul_(scale[c])
            if clip is not None:
                g.clamp_(-clip, clip)
            if full is None:
                m.add_(g, alpha=-self.lr)
            else:
                full[:, c] = g
        if self.opt is not None:
            self.masks.grad = full
            self.opt.step()
            self.masks.grad = None

    def bits(self) -> torch.Tensor:
        """Binary masks 1[sigmoid(m) > threshold] (K x P_shard, bool)."""
        return torch.sigmoid(self.masks) > self.cfg.threshold

    def _block_bits(self, c: slice) -> torch.Tensor:
        return (torch.sigmoid(self.masks[:, c]) > self.cfg.threshold).to(torch.float32)

    def gram(self) -> torch.Tensor:
        """This shard's contribution B B^T (K x K, float64) to the Gram matrix of the bits."""
        k = self.masks.shape[0]
        out = torch.zeros(k, k, dtype=torch.float64, device=self.masks.device)
        for c in self.blocks:
            b = self._block_bits(c)
            out += (b @ b.T).double()  # exact: integer counts < 2^24 per block
        return out

    def on_counts(self) -> torch.Tensor:
        """Number of mask bits on, per model (K,)."""
        return sum(self._block_bits(c).sum(1).long() for c in self.blocks)  # type: ignore[return-value]

    def logit_range(self) -> tuple[float, float]:
        return float(self.masks.min()), float(self.masks.max())
