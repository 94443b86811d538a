"""median, trimmed_mean, geomed and centered_clipping against known answers."""

import numpy as np
import pytest
import torch

from skymask_ray.defenses.distance import closest_to_median_mean
from skymask_ray.defenses.statistics import coordinate_median, geometric_median_weights, trimmed_mean
from skymask_ray.linalg import pairwise_sq_distances


@pytest.mark.parametrize("n", [7, 8])
def test_median_matches_numpy(n, defense, ctx):
    x = torch.randn(n, 50, generator=torch.Generator().manual_seed(n))
    agg = defense("median", n, 2).aggregate(x, ctx(x, 2))
    np.testing.assert_allclose(agg.update.numpy(), np.median(x.numpy(), axis=0), rtol=1e-6, atol=1e-7)
    assert agg.weights.sum().item() == pytest.approx(1.0)


def test_median_rejects_an_outlier_that_never_is_the_median(defense, ctx):
    x = torch.randn(9, 40, generator=torch.Generator().manual_seed(0))
    x[3] = 1e6
    agg = defense("median", 9, 1).aggregate(x, ctx(x, 1))
    assert not agg.accepted[3] and agg.accepted.sum() == 8
    np.testing.assert_allclose(agg.update.numpy(), np.median(x.numpy(), axis=0), rtol=1e-6)


def _np_trimmed(x: np.ndarray, beta: int) -> np.ndarray:
    s = np.sort(x, axis=0)
    return s[beta : len(x) - beta].mean(axis=0)


@pytest.mark.parametrize("n,f", [(10, 3), (9, 4), (6, 0)])
def test_trimmed_mean_matches_numpy(n, f, defense, ctx):
    x = torch.randn(n, 60, generator=torch.Generator().manual_seed(n + f))
    agg = defense("trimmed_mean", n, f).aggregate(x, ctx(x, f))
    np.testing.assert_allclose(agg.update.numpy(), _np_trimmed(x.numpy(), f), rtol=1e-5, atol=1e-6)
    assert agg.weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_trimmed_mean_with_ties_and_huge_outliers(ctx):
    x = torch.randint(-2, 3, (11, 30), generator=torch.Generator().manual_seed(1)).float()
    x[0], x[5] = 1e30, -1e30
    mean, share = trimmed_mean(x, 2)
    np.testing.assert_allclose(mean.numpy(), _np_trimmed(x.numpy().astype(np.float64), 2), rtol=1e-6, atol=1e-6)
    assert share[0] == 0 and share[5] == 0


def test_trimmed_mean_beta_parameter_overrides_f(defense, ctx):
    x = torch.randn(10, 20, generator=torch.Generator().manual_seed(2))
    agg = defense("trimmed_mean", 10, 1, {"beta": 4}).aggregate(x, ctx(x, 1))
    np.testing.assert_allclose(agg.update.numpy(), _np_trimmed(x.numpy(), 4), rtol=1e-5, atol=1e-6)
    assert agg.info["beta"] == 4


def test_coordinate_median_share_counts_both_middles():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    med, share = coordinate_median(x)
    assert med.item() == 1.5
    assert share.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_geomed_of_a_symmetric_set_is_its_centre(defense, ctx):
    c = torch.tensor([1.0, -2.0, 3.0])
    e = torch.eye(3)
    x = torch.cat([c + 2 * e, c - 2 * e, c + 5 * e[:1], c - 5 * e[:1]])
    agg = defense("geomed", len(x), 0).aggregate(x, ctx(x, 0))
    torch.testing.assert_close(agg.update, c, atol=1e-5, rtol=0)
    assert agg.weights.sum().item() == pytest.approx(1.0)
    assert agg.weights[0].item() == pytest.approx(agg.weights[1].item())


def test_geomed_satisfies_the_optimality_condition():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(3)).double()
    c, _ = geometric_median_weights(pairwise_sq_distances(x), maxiter=1000, eps=1e-12, ftol=0.0)
    v = c @ x
    unit = (v - x) / (v - x).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm().item() < 1e-6  # zero (sub)gradient of sum_k ||v - g_k||


def test_geomed_is_robust_to_one_huge_outlier(defense, ctx):
    gen = torch.Generator().manual_seed(4)
    benign = 1.0 + 0.1 * torch.randn(9, 20, generator=gen)
    x = torch.cat([benign, torch.full((1, 20), 1e6)])
    agg = defense("geomed", 10, 1).aggregate(x, ctx(x, 1))
    assert (agg.update - benign.mean(0)).norm() < 0.5
    assert x.mean(0).sub(benign.mean(0)).norm() > 1e4  # the mean is not
    assert agg.weights[-1] < 1e-6 * agg.weights[:-1].min()


def test_centered_clipping_step_is_bounded_by_tau(defense, ctx):
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(5))
    x[0] = 1e4
    cc = defense("centered_clipping", 6, 1, {"tau": 0.5, "iterations": 1})
    first = cc.aggregate(x, ctx(x, 1))
    assert first.update.norm().item() <= 0.5 + 1e-6  # starts from 0
    second = cc.aggregate(x, ctx(x, 1, round=2))
    assert (second.update - first.update).norm().item() <= 0.5 + 1e-6  # starts from the last aggregate
    assert (second.update - first.update).norm().item() > 0.1


def test_centered_clipping_without_clipping_is_the_mean_and_state_round_trips(defense, ctx):
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(6))
    cc = defense("centered_clipping", 5, 0, {"tau": 1e6})
    agg = cc.aggregate(x, ctx(x, 0))
    torch.testing.assert_close(agg.update, x.mean(0))
    again = defense("centered_clipping", 5, 0, {"tau": 0.1})
    again.load_state_dict(cc.state_dict())
    nxt = again.aggregate(x, ctx(x, 0, round=2))
    assert (nxt.update - x.mean(0)).norm().item() <= 0.1 + 1e-6


def test_trimmed_mean_error_names_beta_when_beta_is_given(defense):
    """An impossible beta override is reported as beta (the user's knob), not as f."""
    from skymask_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"beta=5 \(at most beta=4 .*lower beta"):
        defense("trimmed_mean", 10, 1, {"beta": 5})
    with pytest.raises(ConfigError, match=r"f=5 \(at most f=4 .*lower malicious_fraction"):
        defense("trimmed_mean", 10, 5)


@pytest.mark.parametrize("n", [7, 8])
def test_coordinate_rules_are_the_same_in_many_small_blocks(n):
    """Coordinate-major blocks of 3 coordinates (and a ragged last block) give numpy's answers."""
    x = torch.randn(n, 53, generator=torch.Generator().manual_seed(n))
    med, share = coordinate_median(x, block=3 * n)
    np.testing.assert_allclose(med.numpy(), np.median(x.numpy(), axis=0), rtol=1e-6, atol=1e-7)
    assert share.sum().item() == pytest.approx(1.0)
    mean, kept = trimmed_mean(x, 2, block=3 * n)
    np.testing.assert_allclose(mean.numpy(), _np_trimmed(x.numpy(), 2), rtol=1e-5, atol=1e-6)
    assert kept.sum().item() == pytest.approx(1.0, abs=1e-5)
    close, used = closest_to_median_mean(x, 3, block=3 * n)
    dev = np.abs(x.numpy() - np.median(x.numpy(), axis=0))
    pick = np.argsort(dev, axis=0, kind="stable")[:3]
    np.testing.assert_allclose(close.numpy(), np.take_along_axis(x.numpy(), pick, 0).mean(0), rtol=1e-5, atol=1e-6)
    assert used.sum().item() == 3 * 53


def test_trimmed_mean_leaves_a_coordinate_major_input_untouched():
    """Updates given as a transposed (coordinate-major) view are blocks already; the trimming must copy them."""
    store = torch.randn(40, 9, generator=torch.Generator().manual_seed(4))  # P x N
    x = store.T
    before = store.clone()
    mean, _ = trimmed_mean(x, 2, block=9 * 8)
    assert torch.equal(store, before)
    np.testing.assert_allclose(mean.numpy(), _np_trimmed(x.numpy(), 2), rtol=1e-5, atol=1e-6)
