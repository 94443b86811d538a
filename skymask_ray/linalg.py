"""Shared tensor helpers: column blocks, coordinate-major blocks, Gram matrices and pairwise distances (used by attacks, defenses and SkyMask)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def column_blocks(n: int, p: int, budget: int = 2**25) -> list[slice]:
    """Column slices of an N x P matrix holding about ``budget`` elements each (bounds temporaries)."""
    width = max(1, budget // max(n, 1))
    return [slice(i, min(i + width, p)) for i in range(0, p, width)]


def coordinate_blocks(x: torch.Tensor, budget: int = 2**21) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(cols, x[:, cols].T)`` as a fresh contiguous copy (the caller may overwrite it): an N x P matrix
    ``budget`` elements at a time, coordinate-major.

    Per-coordinate selections (topk, kthvalue) then run along contiguous memory,
    and a block of ~8 MB stays in cache: on 2 CPU threads at N = 1000, P = 139,960,
    median 2.6x, trimmed mean 1.7x and Bulyan's second stage 1.9x faster than
    selecting along dim 0 of the row-major matrix in 128 MB blocks (side by side).
    """
    n, p = x.shape
    for cols in column_blocks(n, p, budget):
        yield cols, x[:, cols].T.clone(memory_format=torch.contiguous_format)


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows of ``x`` with no NaN or Inf entry.

    A non-finite entry makes its row's sum non-finite, so only rows whose sum
    is not finite (such an entry, or a sum that overflowed) are checked entry
    by entry: one reduction instead of an N x P boolean temporary.
    """
    ok = torch.isfinite(x.sum(1))
    suspect = torch.nonzero(~ok).flatten()
    if len(suspect):
        ok[suspect] = torch.isfinite(x[suspect]).all(1)
    return ok


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances between rows of ``a`` and rows of ``b`` (default ``a``).

    Uses the Gram trick ``|a|^2 + |b|^2 - 2 a.b`` so that N x N distances of long
    (P ~ 1e5..1e7) vectors cost one matrix product and no N x P temporary (the
    products run in the inputs' dtype, the N x M combination in float64); the
    result is clamped at 0 and the diagonal of ``a`` vs ``a`` is exactly 0.
    """
    same = b is None
    b = a if b is None else b
    na = torch.einsum("ij,ij->i", a, a).double()
    nb = na if same else torch.einsum("ij,ij->i", b, b).double()
    d = na[:, None] + nb[None, :] - 2.0 * (a @ b.T).double()
    d = d.clamp_min_(0.0)
    if same:
        d = (d + d.T) / 2  # a float32 a @ a.T need not be exactly symmetric
        d.fill_diagonal_(0.0)
    return d.to(a.dtype)


def centred_gram(x: torch.Tensor, budget: int = 2**25) -> torch.Tensor:
    """(N, N) float64 Gram matrix of the rows of ``x`` after subtracting the column means.

    Built over column blocks (each centred and multiplied on its own, the block
    products summed in float64), so there is no N x P temporary. PCA of the rows is
    an eigendecomposition of this N x N matrix (``KernelPCA(kernel="precomputed")``).
    """
    n, p = x.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for cols in column_blocks(n, p, budget):
        b = x[:, cols]
        b = b - b.mean(dim=0)
        gram += (b @ b.T).double()
    return (gram + gram.T) / 2


def pairwise_distances(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances between rows (see :func:`pairwise_sq_distances`)."""
    return pairwise_sq_distances(a, b).sqrt()


def from_readonly(arr) -> torch.Tensor:
    """A tensor view of a (possibly read-only, e.g. Ray object store) numpy array, no copy.

    Callers must not write into it; torch's non-writable warning is silenced here only.
    """
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.asarray(arr))


def krum_scores(sq_dists: torch.Tensor, f: int) -> torch.Tensor:
    r"""Krum score of every row (Blanchard et al., NeurIPS 2017) from its squared-distance matrix.

    .. math:: s_i = \sum_{j \in \mathcal{N}_i} \|g_i - g_j\|^2,

    with :math:`\mathcal{N}_i` the :math:`N - f - 2` rows nearest to row i
    (itself excluded). ``sq_dists`` is the N x N output of
    :func:`pairwise_sq_distances`. The neighbour count is clamped to
    [1, N - 1] so the score stays defined where N <= 2f + 2 (Krum's guarantee
    no longer holds there; callers that need it check N themselves).
    """
    n = sq_dists.shape[0]
    m = min(max(n - f - 2, 1), n - 1)
    d = sq_dists.clone()
    d.fill_diagonal_(float("inf"))
    return d.topk(m, dim=1, largest=False).values.sum(1)
