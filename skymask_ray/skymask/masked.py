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

Layout: a shard stores masks and updates coordinate-major (P x K in memory,
seen as K x P through a transposed view), so everything coordinate i needs is
one contiguous row. One SGD step is then a single fused pass (``torch.compile``):
read the row's masks, updates and stored sigma(m), move the masks, store their
new sigma(m) and sum it and sigma(m) g over the row for the next step's W: one
sigmoid per entry (the exp is what bounds the step on a CPU), three K x P
float32 arrays of state. The eager fallback runs the same formulas over
cache-sized row blocks.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import SkyMaskConfig
from ..kernels import Choice, choose
from ..linalg import column_blocks

log = logging.getLogger(__name__)


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


def _row_sums(m: torch.Tensor, s: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate (row): s = sigma(m) (stored for the next step), then sum_k s_ki and sum_k s_ki g_ki."""
    s.copy_(torch.sigmoid(m))
    return s.sum(1), (s * u).sum(1)


def _row_grad(s: torch.Tensor, u: torch.Tensor, g_bar: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """dL/dm on coordinate-major rows from the stored s = sigma(m): s (1 - s) (g_bar - g) dL/dW / sum s."""
    return torch.sub(g_bar[:, None], u).mul_(s).mul_(1 - s).mul_(scale[:, None])


def _row_sgd(m: torch.Tensor, s: torch.Tensor, u: torch.Tensor, g_bar: torch.Tensor, scale: torch.Tensor,
             lr: torch.Tensor, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place m -= lr * clamp(dL/dm, +-clip), then s and the row sums at the new m (one pass when compiled).

    One sigmoid per entry and step: the gradient reads the s the previous
    step stored (computing sigma twice, for the gradient at the old m and the
    sums at the new one, made the compiled step compute-bound: 60 ms against
    34 ms at K = 501, P = 139,960 on a 2-core EPYC). ``lr`` and ``clip`` are
    0-d tensors so one compiled kernel serves every setting.
    """
    m.sub_(_row_grad(s, u, g_bar, scale).clamp_(-clip, clip).mul_(lr))
    return _row_sums(m, s, u)


@dataclass(frozen=True)
class RowKernels:
    """The three row functions, compiled (one fused loop each) or eager."""

    sums: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    grad: Callable[..., torch.Tensor]
    sgd: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    compiled: bool


EAGER = RowKernels(_row_sums, _row_grad, _row_sgd, compiled=False)


# below this many K x P entries a step takes milliseconds eager: compiling (seconds, once per process) does not pay
COMPILE_MIN_ENTRIES = 2**23
PROBE_ENTRIES = 2**24  # K x rows of a mask-step probe: 64 MB per float32 matrix, beyond the caches as the real state is


@functools.cache
@torch.no_grad()
def compiled_kernels(device_type: str) -> RowKernels | None:
    """The row functions through ``torch.compile`` (dynamic shapes), compiled once per process and device type.

    The SGD step and the sums compile right away on 2048 x 512 rows: inductor
    picks its loop strategy from the first call's sizes (37 x 5 rows gave a
    kernel 2x slower on the 501-wide rows of N = 500), and the kernels then
    serve every shape. The Adam-only gradient is left to compile on its first
    call (``torch.compile`` compiles lazily; warming it took 1.7 s of set-up).
    Returns None, with a warning, where compilation does not work (no C++
    compiler on a CPU node, no Triton on a GPU node); callers then run eager.
    """
    kernels = RowKernels(*(torch.compile(f, dynamic=True) for f in (_row_sums, _row_grad, _row_sgd)), compiled=True)
    # inductor imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on import when a CUDA
    # build of torch runs on a machine without a GPU: true and harmless for a CPU kernel, so not shown
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    if device_type == "cpu":
        cpp_log.setLevel(logging.ERROR)
    try:
        m, u = torch.zeros(2048, 512, device=device_type), torch.ones(2048, 512, device=device_type)
        sig = torch.empty_like(m)
        lr, clip = torch.ones((), device=device_type), torch.ones((), device=device_type)
        total, num = kernels.sums(m, sig, u)
        kernels.sgd(m, sig, u, num / total, total, lr, clip)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: use eager
        log.warning("torch.compile of the mask step failed on %s (%s); using the eager step", device_type,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    finally:
        cpp_log.setLevel(level)
    return kernels


def size_bucket(k: int) -> str:
    """The problem-size class a probe's answer holds for: K rounded up to a power of two."""
    return f"K<={1 << max(0, k - 1).bit_length()}"


@functools.cache
def step_choice(device_type: str, k: int) -> Choice:
    """Compiled or eager mask step for K masks on this machine, by timing both (:mod:`skymask_ray.kernels`).

    The probe is a shard of K masks over ``PROBE_ENTRIES / K`` coordinates,
    stepped as a run steps it (the eager path blockwise). Compiling comes
    first (seconds, once per process; torch caches it on disk); where it
    fails, eager is the only candidate.
    """
    compiled = compiled_kernels(device_type)
    kernels = {"eager": EAGER, **({"compiled": compiled} if compiled is not None else {})}
    rows = max(16, PROBE_ENTRIES // max(k, 1))
    gen = torch.Generator().manual_seed(0)
    updates = (1e-3 * torch.randn(k, rows, generator=gen)).to(device_type)
    w, grad = torch.zeros(rows, device=device_type), 1e-3 * torch.randn(rows, generator=gen).to(device_type)
    cfg = SkyMaskConfig()
    shards = {name: MaskShard(updates, w, cfg, 1e7, kernels=kern) for name, kern in kernels.items()}
    cands = {name: (lambda _n, s=s: s.step(grad)) for name, s in shards.items()}
    return choose("mask_step", size_bucket(k), cands, device_type, small=1, full=1)


def row_kernels(kind: str, device_type: str, k: int, p: int) -> tuple[RowKernels, Choice]:
    """The mask step for K masks of P coordinates, and why: ``kind`` compiled | eager | auto.

    ``auto``: eager below COMPILE_MIN_ENTRIES entries (a step takes
    milliseconds, compiling seconds), else whichever of compiled and eager the
    probe found faster on this machine (:func:`step_choice`).
    """
    if kind == "eager":
        return EAGER, Choice("mask_step", "eager", note="skymask.kernel")
    if kind == "auto" and k * p < COMPILE_MIN_ENTRIES:
        return EAGER, Choice("mask_step", "eager", note=f"{k} x {p} entries: too few to compile")
    if kind == "auto":
        choice = step_choice(device_type, k)
        return (compiled_kernels(device_type) if choice.chosen == "compiled" else EAGER), choice
    kernels = compiled_kernels(device_type)
    if kernels is None:
        raise RuntimeError(f"skymask.kernel = compiled, but torch.compile does not work on {device_type}")
    return kernels, Choice("mask_step", "compiled", note="skymask.kernel")


# bits per block of the Gram product, in the product's input type: 16 MB blocks in one reused buffer made the
# float32 Gram 1.0-1.2x its bare GEMM at K = 101 and 501 (64 MB blocks, a fresh buffer each: 1.4-2.0x, page faults)
GRAM_BLOCK_BYTES = 2**24


def gram_float32(m: torch.Tensor, threshold: float) -> torch.Tensor:
    """B^T B (K x K, float64) of the bits B = m > threshold of coordinate-major masks m (P x K), float32 products.

    Exact: blocks of at most 2^24 coordinates keep every count of a block
    product below 2^24, which float32 holds exactly (TF32 too: 0/1 inputs
    and their products are exact there, sums are float32); blocks are summed
    in float64. The bits of each block are written into one reused buffer.
    """
    p, k = m.shape
    out = torch.zeros(k, k, dtype=torch.float64, device=m.device)
    step = max(1, min(2**24, GRAM_BLOCK_BYTES // (4 * max(k, 1))))
    buf = torch.empty(min(step, p), k, device=m.device)
    for i in range(0, p, step):
        block = m[i:i + step]
        b = buf[:block.shape[0]]
        torch.gt(block, threshold, out=b)
        out += (b.T @ b).double()
    return out


INT_MM_MIN_ROWS = 16  # torch._int_mm's CPU kernel wants at least this inner dimension


def gram_int8(m: torch.Tensor, threshold: float) -> torch.Tensor:
    """The same B^T B through torch's int8 product with int32 sums (``torch._int_mm``, a private API); exact."""
    p, k = m.shape
    out = torch.zeros(k, k, dtype=torch.float64, device=m.device)
    step = max(INT_MM_MIN_ROWS, min(2**24, GRAM_BLOCK_BYTES // max(k, 1)))
    for i in range(0, p, step):
        b = m[i:i + step] > threshold
        if b.shape[0] < INT_MM_MIN_ROWS:
            bf = b.to(torch.float32)
            out += (bf.T @ bf).double()
            continue
        b8 = b.to(torch.int8)
        out += torch._int_mm(b8.T.contiguous(), b8).double()
    return out


GRAM_KERNELS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {"float32": gram_float32}
if hasattr(torch, "_int_mm"):
    GRAM_KERNELS["int8"] = gram_int8
GRAM_PROBE_SMALL = 512  # coordinates of the first, dropping probe (int8 took 0.5 ms a coordinate at K = 501 where slow)
GRAM_PROBE_FULL = 2**15


@functools.cache
def gram_choice(device_type: str, k: int) -> Choice:
    """The faster exact Gram product for K masks on this machine (float32 is the default; int8 where it wins)."""
    cands = dict(GRAM_KERNELS)
    if device_type == "cuda" and k % 8:
        cands.pop("int8", None)  # the CUDA int8 product wants dimensions that are multiples of 8
    m = torch.randn(GRAM_PROBE_FULL, k, generator=torch.Generator().manual_seed(0)).to(device_type)
    return choose("gram", size_bucket(k), {name: (lambda n, f=f: f(m[:n], 0.0)) for name, f in cands.items()},
                  device_type, small=GRAM_PROBE_SMALL, full=GRAM_PROBE_FULL)


class Workspace:
    """The K x P buffers of mask training (updates, masks, their sigmoid), kept from one round to the next.

    Fresh buffers each round cost a page fault per 4 KB page: at N = 500 the
    three 280 MB arrays took 1.5-2 s of a SkyMask round in system time on a
    2-core VM (about 8 us a fault while the clients' memory churned), more than
    the 20 mask steps themselves (0.7 s). A trainer that keeps a workspace pays
    that once, holding the memory it needs at its peak anyway. One user at a time.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """An uninitialised float32 buffer of ``shape``: last time's if it has that shape, else a new one."""
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.device != device:
            self._buffers.pop(name, None)  # the old one goes first: never both at once
            buf = self._buffers[name] = torch.empty(shape, device=device)
        return buf


class MaskShard:
    """One coordinate range of the K x P masks and models, with its optimiser.

    The gradient is clamped element-wise to ``mask_grad_clip`` (the paper's
    code: SGD, lr 1e7, clamp 1e-7, i.e. at most 1 per step). SGD (the paper's)
    is applied in place; each step also returns the column sums that the next
    :meth:`weighted_average` needs, so a step is one pass over the state. Adam
    uses torch's optimiser on the full gradient. ``block`` (coordinates per
    pass) bounds the eager path's temporaries; the compiled path has none.
    """

    STATE = ("rows", "m", "s")  # the workspace buffers a shard takes, each P x K float32: updates, masks, sigma(m)

    def __init__(self, updates: torch.Tensor, w: torch.Tensor, cfg: SkyMaskConfig, lr: float,
                 block: int | None = None, kernels: RowKernels | None = None, workspace: Workspace | None = None,
                 name: str = "") -> None:
        """``workspace``: where the K x P state lives (a new one if None); ``name`` tells shards sharing one apart."""
        ws = workspace or Workspace()
        k, p = updates.shape
        rows, m, s = (ws.take(name + part, (p, k), updates.device) for part in self.STATE)
        # K x P in, stored P x K (coordinate-major); only read, never written; row 0 of the K axis = the server's g_0
        self.rows = rows.copy_(updates.T)
        self.w = w
        self.cfg = cfg
        self.lr = lr
        self._m = m.fill_(float(cfg.mask_init))
        self._s = s  # sigma(m): written with the sums, read by the next step's gradient
        self.kernels = kernels or row_kernels(cfg.kernel, self.rows.device.type, k, p)[0]
        width = block or (p if self.kernels.compiled else max(16, 2**21 // max(k, 1)))  # eager: ~8 MB blocks
        self.blocks = column_blocks(k, p, budget=k * width)
        clip = cfg.mask_grad_clip if cfg.mask_grad_clip is not None else math.inf
        self._clip = clip
        self._lr_clip = tuple(torch.tensor(float(v), device=self._m.device) for v in (lr, clip))  # kernel inputs
        self._sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self.opt = torch.optim.Adam([self._m], lr=lr) if cfg.optimizer == "adam" else None

    @classmethod
    def reserve(cls, workspace: Workspace, k: int, p: int, device: torch.device, name: str = "") -> None:
        """Allocate and touch a shard's state in ``workspace`` now (set-up), not in round 1's mask training."""
        for part in cls.STATE:
            workspace.take(name + part, (p, k), device).zero_()

    @property
    def masks(self) -> torch.Tensor:
        """The mask logits as K x P (a view of the coordinate-major storage)."""
        return self._m.T

    def _blockwise(self, f: Callable[..., tuple[torch.Tensor, torch.Tensor]], *args) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a row function over the blocks; per-coordinate vectors in ``args`` are sliced along."""
        if len(self.blocks) == 1:
            return f(self._m, self._s, self.rows, *args)
        parts = [f(self._m[c], self._s[c], self.rows[c], *(a[c] if a.dim() == 1 else a for a in args))
                 for c in self.blocks]
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])

    @torch.no_grad()
    def weighted_average(self) -> torch.Tensor:
        """This shard's slice of W (the column sums come from the last step when there was one)."""
        if self._sums is None:
            self._sums = self._blockwise(self.kernels.sums)
        total, num = self._sums
        return self.w - num / total

    @torch.no_grad()
    def step(self, grad_w: torch.Tensor) -> None:
        """One optimiser step from this shard's slice of dL/dW (same formula as :func:`mask_gradient`)."""
        if self._sums is None:
            self.weighted_average()
        total, num = self._sums  # type: ignore[misc]
        g_bar, scale = num / total, grad_w.to(self._m.device) / total
        if self.opt is None:
            self._sums = self._blockwise(self.kernels.sgd, g_bar, scale, *self._lr_clip)
            return
        grad = torch.empty_like(self._m)
        for c in self.blocks:
            grad[c] = self.kernels.grad(self._s[c], self.rows[c], g_bar[c], scale[c]).clamp_(-self._clip, self._clip)
        self._m.grad = grad
        self.opt.step()
        self._m.grad = None
        self._sums = None

    def _bit_threshold(self) -> float:
        """sigma(m) > t  <=>  m > logit(t): the bits without a sigmoid (exact where float sigmoid rounds)."""
        t = self.cfg.threshold
        return math.log(t / (1 - t))

    def bits(self) -> torch.Tensor:
        """Binary masks 1[sigmoid(m) > threshold] (K x P_shard, bool)."""
        return (self._m > self._bit_threshold()).T

    def gram(self) -> torch.Tensor:
        """This shard's contribution B B^T (K x K, float64) to the Gram matrix of the bits; exact.

        By the product the probe found faster on this machine (:func:`gram_choice`).
        """
        k = self._m.shape[1]
        return GRAM_KERNELS[gram_choice(self._m.device.type, k).chosen](self._m, self._bit_threshold())


BYTES_PER_ENTRY = 4 * len(MaskShard.STATE)  # updates, masks and their sigmoid, float32 (no K x P temporaries)


def auto_shards(rows: int, numel: int, cfg: SkyMaskConfig) -> int:
    """Shards needed so each holds at most ``shard_memory_gb`` of mask state (explicit ``shards`` wins)."""
    if cfg.shards is not None:
        return cfg.shards
    need = rows * numel * BYTES_PER_ENTRY / 1024**3
    return max(1, math.ceil(need / cfg.shard_memory_gb))
