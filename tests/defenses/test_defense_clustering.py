"""flame, pca_kmeans, dnc and signguard on planted clusters."""

import pytest
import torch

from skymask_ray.defenses import DEFENSES
from skymask_ray.errors import ConfigError

from .helpers import make_cfg


def _two_groups(n_good: int, n_bad: int, p: int, seed: int = 0, spread: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign rows around one direction, attackers around the opposite one; returns (updates, is_bad)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(p, generator=gen)
    good = d + spread * d.norm() / p**0.5 * torch.randn(n_good, p, generator=gen)
    bad = -d + spread * d.norm() / p**0.5 * torch.randn(n_bad, p, generator=gen)
    is_bad = torch.cat([torch.zeros(n_good, dtype=torch.bool), torch.ones(n_bad, dtype=torch.bool)])
    return torch.cat([good, bad]), is_bad


def test_flame_admits_the_majority_cluster(defense, ctx):
    x, is_bad = _two_groups(14, 6, 200)
    x[1] *= 5  # a long benign update: same direction, so clustered with the rest, then clipped
    agg = defense("flame", 20, 6, {"noise_lambda": 0.0}).aggregate(x, ctx(x, 6))
    # HDBSCAN's single-cluster labelling admits the densest min_cluster_size = N/2 + 1 of the majority
    assert not agg.accepted[is_bad].any()
    assert int(agg.accepted.sum()) == 11
    norms = x.norm(dim=1)
    s = norms.sort().values[9:11].mean()
    ok = agg.accepted
    clipped = x[ok] * (s / norms[ok]).clamp(max=1)[:, None]
    torch.testing.assert_close(agg.update, clipped.mean(0))
    assert agg.info["clip_norm"] == pytest.approx(float(s))


def test_flame_noise_std_is_lambda_times_median_norm_not_squared(defense, ctx):
    p = 40000
    x, _ = _two_groups(5, 0, p, seed=1)
    x = 3.0 * x / x.norm(dim=1, keepdim=True)  # every norm is S = 3
    noiseless = defense("flame", 5, 0, {"noise_lambda": 0.0}).aggregate(x, ctx(x, 0)).update
    agg = defense("flame", 5, 0, {"noise_lambda": 0.1}).aggregate(x, ctx(x, 0))
    std = (agg.update - noiseless).std().item()
    assert std == pytest.approx(0.3, rel=0.03)  # lambda * S; squared it would be 0.09
    assert agg.info["noise_std"] == pytest.approx(0.3)


def test_flame_noise_comes_from_the_context_generator(defense, ctx):
    x, _ = _two_groups(5, 0, 50, seed=2)
    fl = defense("flame", 5, 0)
    a = fl.aggregate(x, ctx(x, 0, seed=1)).update
    b = fl.aggregate(x, ctx(x, 0, seed=1)).update
    c = fl.aggregate(x, ctx(x, 0, seed=2)).update
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flame_rejects_a_min_cluster_size_above_n():
    with pytest.raises(ConfigError, match="min_cluster_size <= N"):
        DEFENSES.get("flame").check(make_cfg(10, 2, "flame", {"min_cluster_size": 11}))


def test_pca_kmeans_keeps_the_larger_cluster(defense, ctx):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 30, generator=gen) * 0.1
    b = 4.0 + torch.randn(4, 30, generator=gen) * 0.1
    for x, keep in ((torch.cat([a, b]), [True] * 6 + [False] * 4), (torch.cat([b, a]), [False] * 4 + [True] * 6)):
        agg = defense("pca_kmeans", 10, 4).aggregate(x, ctx(x, 4))
        assert agg.accepted.tolist() == keep
        torch.testing.assert_close(agg.update, x[agg.accepted].mean(0))


def test_pca_kmeans_can_look_at_one_layer_only(defense, ctx):
    from skymask_ray.models import ParamSpec

    spec = ParamSpec(("body", "head"), (torch.Size([20]), torch.Size([5])), (0, 20), 25)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(10, 25, generator=gen) * 0.1
    x[:3, 20:] += 5.0  # attackers differ only in the head
    x[3:6, :20] += 5.0  # a benign split in the body that the head-only view ignores
    agg = defense("pca_kmeans", 10, 3, {"layer": "head"}).aggregate(x, ctx(x, 3, spec=spec))
    assert agg.accepted.tolist() == [False] * 3 + [True] * 7
    with pytest.raises(ValueError, match="no parameter name starts with 'tail'"):
        defense("pca_kmeans", 10, 3, {"layer": "tail"}).aggregate(x, ctx(x, 3, spec=spec))


def test_dnc_drops_planted_outliers(defense, ctx):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(20, 500, generator=gen)
    direction = torch.randn(500, generator=gen)
    x[:3] += 3.0 * direction  # shifted along one direction: the top singular vector
    agg = defense("dnc", 20, 3, {"subsample": 200, "niters": 3}).aggregate(x, ctx(x, 3))
    assert agg.accepted.tolist() == [False] * 3 + [True] * 17
    torch.testing.assert_close(agg.update, x[3:].mean(0))


def test_dnc_scores_are_squared_projections_on_the_top_singular_vector():
    from skymask_ray.defenses.clustering import dnc_scores

    x = torch.randn(12, 40, generator=torch.Generator().manual_seed(9)).double()
    x[:2] += 2.0
    centred = x - x.mean(0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    torch.testing.assert_close(dnc_scores(x), (centred @ v) ** 2)


def test_dnc_with_f_zero_keeps_everyone(defense, ctx):
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(6))
    agg = defense("dnc", 8, 0).aggregate(x, ctx(x, 0))
    assert agg.accepted.all()


def test_dnc_rejects_dropping_everyone():
    with pytest.raises(ConfigError, match="c\\*f < N"):
        DEFENSES.get("dnc").check(make_cfg(10, 4, "dnc", {"c": 3.0}))


@pytest.mark.parametrize("method", ["meanshift", "kmeans"])
def test_signguard_rejects_sign_flipped_updates(method, defense, ctx):
    gen = torch.Generator().manual_seed(7)
    benign = torch.randn(12, 2000, generator=gen) + 0.6  # about 73 % positive coordinates
    x = torch.cat([benign[:9], -benign[9:]])  # three sign-flipped: same norms, mostly negative
    agg = defense("signguard", 12, 3, {"cluster": method}).aggregate(x, ctx(x, 3))
    assert agg.accepted.tolist() == [True] * 9 + [False] * 3
    assert agg.info["sign_rejected"] == 3 and agg.info["norm_rejected"] == 0


def test_signguard_norm_filter_and_clipping(defense, ctx):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 1000, generator=gen).abs() + 0.5  # identical sign statistics: the sign filter keeps all
    x[0] *= 10  # norm far above R * median: rejected by the norm filter
    x[1] *= 1.5  # above the median norm: kept, clipped to it
    agg = defense("signguard", 9, 1).aggregate(x, ctx(x, 1))
    assert not agg.accepted[0] and agg.accepted[1:].all()
    norms = x.norm(dim=1)
    m = norms.median()
    expected = (x[1:] * (m / norms[1:]).clamp(max=1)[:, None]).mean(0)
    torch.testing.assert_close(agg.update, expected)
