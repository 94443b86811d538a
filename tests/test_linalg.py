"""Shared tensor helpers."""

import torch

from skymask_ray.defenses.base import mean_of
from skymask_ray.linalg import finite_rows


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
