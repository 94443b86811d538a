"""Properties every defense shares: shapes, dtypes, f = 0, fltrust's trust weights."""

import pytest
import torch
import torch.nn.functional as F

from skymask_ray.defenses import DEFENSES, defense_settings
from skymask_ray.defenses.base import BoundedDefense
from skymask_ray.errors import ConfigError

from .helpers import make_cfg

NAMES = [n for n in DEFENSES.names() if n != "skymask"]  # skymask needs the mask trainer (tested with it)


def _updates(n: int, p: int, n_bad: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 + torch.randn(n, p, generator=gen)
    x[:n_bad] = -10 * x[:n_bad]
    return x


def test_the_registry_lists_every_baseline():
    expected = {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed", "centered_clipping",
                "fltrust", "flame", "fldetector", "dnc", "pca_kmeans", "signguard", "skymask"}
    assert expected <= set(DEFENSES.names())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("f", [0, 3])
def test_every_defense_returns_a_p_vector_and_an_n_mask(name, f, defense, ctx):
    n, p = 15, 64
    x = _updates(n, p, f)
    d = defense(name, n, f)
    g0 = x[f:].mean(0)
    for r in (1, 2):
        agg = d.aggregate(x, ctx(x, f, round=r, server_update=g0, global_weights=torch.full((p,), float(r))))
        assert agg.update.shape == (p,) and agg.update.dtype == torch.float32
        assert agg.accepted.shape == (n,) and agg.accepted.dtype == torch.bool
        assert torch.isfinite(agg.update).all()
        if agg.weights is not None:
            assert agg.weights.shape == (n,)
            assert torch.equal(agg.accepted, agg.weights > 0)
        assert agg.accepted.any() or agg.fallback
    assert isinstance(d.state_dict(), dict)


@pytest.mark.parametrize("name", NAMES)
def test_every_defense_checks_its_params(name):
    with pytest.raises(ConfigError, match="unknown parameter"):
        DEFENSES.get(name).check(make_cfg(20, 2, name, {"no_such_param": 1}))


def test_fltrust_weights_are_relu_cosines(defense, ctx):
    gen = torch.Generator().manual_seed(0)
    g0 = torch.randn(20, generator=gen)
    x = torch.stack([g0 * 3, -g0, torch.randn(20, generator=gen), g0 + torch.randn(20, generator=gen)])
    agg = defense("fltrust", 4, 1).aggregate(x, ctx(x, 1, server_update=g0))
    trust = F.relu(F.cosine_similarity(x, g0[None], dim=1))
    torch.testing.assert_close(agg.weights, trust)
    assert agg.accepted.tolist() == (trust > 0).tolist()
    assert not agg.accepted[1]
    scaled = x * (g0.norm() / x.norm(dim=1))[:, None]
    torch.testing.assert_close(agg.update, (trust[:, None] * scaled).sum(0) / trust.sum())


@pytest.mark.parametrize("name", NAMES)
def test_one_remaining_row_gives_a_step_or_a_clear_error(name, ctx):
    """The loop drops NaN/Inf rows; a defense left with one row either aggregates it or names its assumption."""
    cls = DEFENSES.get(name)
    d = cls(defense_settings(make_cfg(5, 0, name)))
    x = torch.randn(1, 8)
    if issubclass(cls, BoundedDefense) and cls.max_f(1) < 0:
        with pytest.raises(ConfigError, match="assumes"):
            d.aggregate(x, ctx(x, 0, server_update=x[0]))
        return
    agg = d.aggregate(x, ctx(x, 0, server_update=x[0]))
    assert agg.update.shape == (8,) and agg.accepted.tolist() == [True]
