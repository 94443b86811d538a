"""Shared tensor helpers."""

import numpy as np
import torch
from sklearn.decomposition import PCA, KernelPCA

from skymask_ray.defenses.base import mean_of
from skymask_ray.linalg import centred_gram, finite_rows


def test_finite_rows_equals_the_entrywise_check():
    """NaN, +-Inf and Inf - Inf rows are caught; a finite row whose sum overflows stays valid."""
    x = torch.randn(10, 37, generator=torch.Generator().manual_seed(0))
    x[2, 3] = float("nan")
    x[5, 0] = float("inf")
    x[7, 1], x[7, 2] = float("inf"), float("-inf")
    x[9, :4] = 3e38  # finite entries, the float32 row sum overflows to inf
    expected = torch.isfinite(x).all(1)
    assert torch.equal(finite_rows(x), expected)
    assert expected.tolist() == [True, True, False, True, True, False, True, False, True, True]


def test_mean_of_equals_the_mean_of_the_accepted_rows():
    x = torch.randn(9, 50, generator=torch.Generator().manual_seed(1))
    accepted = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    torch.testing.assert_close(mean_of(x, accepted), x[accepted].mean(0))
    assert torch.equal(mean_of(x, torch.zeros(9, dtype=torch.bool)), torch.zeros(50))


def test_centred_gram_in_blocks_gives_the_pca_of_the_rows():
    """The blocked, float64-summed Gram of centred rows, and PCA from it, equal the direct computation."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 101, generator=gen) * torch.linspace(3.0, 0.1, 101) + 5.0
    gram = centred_gram(x, budget=12 * 10)  # 11 column blocks, the last one ragged
    xc = (x - x.mean(0)).double()
    torch.testing.assert_close(gram, xc @ xc.T, rtol=1e-5, atol=1e-4)
    coords = KernelPCA(n_components=2, kernel="precomputed").fit_transform(gram.numpy())
    direct = PCA(n_components=2, svd_solver="full").fit_transform(x.double().numpy())
    np.testing.assert_allclose(np.abs(coords), np.abs(direct), rtol=1e-4, atol=1e-4)
