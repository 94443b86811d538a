"""Pre-aggregators (nnm, bucketing) by hand, and composed with defenses through defense_params.pre."""

import pytest
import torch

from skymask_ray.experiment import build_config
from skymask_ray.defenses import build_defense
from skymask_ray.defenses.pre import PRE_AGGREGATORS, bucketing, map_back, nnm
from skymask_ray.errors import ConfigError
from skymask_ray.seeding import torch_generator


def test_registry():
    assert PRE_AGGREGATORS.names() == ["bucketing", "nnm"]


def test_nnm_matches_a_hand_computation():
    # points on a line: 0, 1, 3, 7, 20; N = 5, f = 2 -> each row averages its 3 nearest (itself included)
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0], [20.0]])
    mixed, mix = nnm(x, 2, None)
    expected = torch.tensor([[(0 + 1 + 3) / 3], [(0 + 1 + 3) / 3], [(0 + 1 + 3) / 3], [(1 + 3 + 7) / 3],
                             [(3 + 7 + 20) / 3]])
    torch.testing.assert_close(mixed, expected)
    neighbours = [[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    want = torch.zeros(5, 5)
    for i, row in enumerate(neighbours):
        want[i, row] = 1 / 3
    torch.testing.assert_close(mix, want)  # row i: which clients it mixes, and how much
    # f = 0: every row becomes the mean; 2-D distances are Euclidean
    mixed0, _ = nnm(x, 0, None)
    torch.testing.assert_close(mixed0, x.mean(0).expand(5, 1))
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 6.0], [10.0, 10.0]])
    m, _ = nnm(y, 2, None)  # itself and the closest other: d01 = 5, d12 = 3.6, d13 = 9.2 are the minima
    torch.testing.assert_close(m, torch.stack([(y[0] + y[1]) / 2, (y[1] + y[2]) / 2, (y[2] + y[1]) / 2,
                                               (y[3] + y[1]) / 2]))


def test_nnm_keeps_itself_even_among_duplicates():
    x = torch.tensor([[1.0], [1.0], [1.0], [5.0]])
    mixed, _ = nnm(x, 3, None)  # one neighbour: itself
    torch.testing.assert_close(mixed, x)


def test_bucketing_means_with_a_fixed_generator():
    x = torch.arange(7, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 10.0]])
    mixed, mix = bucketing(x, 1, torch.Generator().manual_seed(5), bucket_size=3)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    buckets = [perm[:3], perm[3:6], perm[6:]]
    assert mixed.shape == (3, 2) and mix.shape == (3, 7)
    for j, members in enumerate(buckets):
        torch.testing.assert_close(mixed[j], x[members].mean(0))
        assert torch.equal(torch.nonzero(mix[j]).flatten().sort().values, members.sort().values)
        torch.testing.assert_close(mix[j, members], torch.full((len(members),), 1 / len(members)))
    assert torch.equal((mix > 0).sum(0), torch.ones(7, dtype=torch.long))  # every client in exactly one bucket


def test_map_back():
    mix = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]])
    acc, w = map_back(mix, torch.tensor([True, False]), torch.tensor([0.7, 0.0]))
    assert acc.tolist() == [True, False, True, False]
    torch.testing.assert_close(w, torch.tensor([0.35, 0.0, 0.35, 0.0]))  # each client's share of the aggregate


def make(name, n, f, params):
    cfg = build_config(overrides={"clients": n, "malicious_fraction": f / n, "defense": name,
                                  "defense_params": params, "data": {"dataset": "synthetic"}})
    return build_defense(cfg)


def planted(n=10, p=20, bad=(0,), scale=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 1.0 + 0.3 * torch.randn(n, p, generator=g)
    for i in bad:
        x[i] = scale * torch.randn(p, generator=g)
    return x


def test_krum_with_nnm_accepts_the_clients_mixed_into_the_chosen_row(ctx):
    """The verdict of the client, not the row: Krum picks one NNM row, which averages N - f clients,
    and exactly those clients' updates reach the aggregate, so exactly they count as accepted."""
    x = planted(bad=(0, 1))
    plain = make("krum", 10, 2, {})
    composed = make("krum", 10, 2, {"pre": "nnm"})
    c = ctx(x, 2)
    agg = composed.aggregate(x, c)
    mixed, mix = nnm(x, 2)
    inner = plain.aggregate(mixed, ctx(mixed, 2))
    chosen = inner.info["selected"]
    assert torch.equal(agg.accepted, mix[chosen] > 0)
    assert int(agg.accepted.sum()) == 8 and not agg.accepted[:2].any()  # the planted outliers are in no chosen mix
    torch.testing.assert_close(agg.update, mixed[chosen])
    assert agg.info["pre"] == "nnm" and agg.info["pre_rows"] == 10


def test_nnm_and_bucketing_count_a_client_the_same_way(ctx):
    """Under both pre-aggregators a client is accepted iff it is mixed into an accepted row: a client
    whose own NNM row is rejected but which sits in an accepted neighbourhood is accepted, as a member
    of an accepted bucket is."""
    x = planted(n=10, bad=(0,), scale=1000.0)
    for params in ({"pre": "nnm"}, {"pre": "bucketing", "bucket_size": 2}):
        d = make("krum", 10, 1, params)
        agg = d.aggregate(x, ctx(x, 1))
        mixed, mix = PRE_AGGREGATORS.get(params["pre"])(x, 1, torch_generator(d.settings.seed, "pre", 1),
                                                         **d.pre.kwargs())
        rows = make("krum", 10, 1, {}).aggregate(mixed, ctx(mixed, 1)).accepted
        assert torch.equal(agg.accepted, (mix[rows] > 0).any(0)), params
        assert not agg.accepted[0]  # the outlier is mixed into no accepted row


def test_krum_with_bucketing_accepts_the_members_of_the_chosen_bucket(ctx):
    x = planted(n=12, bad=(3,))
    composed = make("krum", 12, 1, {"pre": "bucketing", "bucket_size": 3})
    c = ctx(x, 1, round=4, seed=2)
    agg = composed.aggregate(x, c)
    mixed, mix = bucketing(x, 1, torch_generator(composed.settings.seed, "pre", 4), bucket_size=3)
    inner = make("krum", 12, 1, {}).aggregate(mixed, ctx(mixed, 1))
    chosen = inner.info["selected"]
    assert torch.equal(agg.accepted, mix[chosen] > 0)
    assert int(agg.accepted.sum()) == 3 and not agg.accepted[3]
    torch.testing.assert_close(agg.update, mixed[chosen])
    assert agg.info["pre_rows"] == 4


def test_weights_and_rejections_map_back_through_bucketing(ctx):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    g0 = x.mean(0)
    d = make("fltrust", 8, 2, {"pre": "bucketing"})
    agg = d.aggregate(x, ctx(x, 2, server_update=g0))
    assert agg.weights.shape == (8,) and torch.equal(agg.accepted, agg.weights > 0)
    mixed, mix = bucketing(x, 2, torch_generator(d.settings.seed, "pre", 1), bucket_size=2)
    for j in range(len(mixed)):
        members = mix[j] > 0
        assert len(set(agg.weights[members].tolist())) == 1  # a bucket's members share its weight


def test_a_planted_outliers_influence_is_reduced(ctx):
    x = planted(n=10, bad=(0,), scale=1000.0)
    benign_mean = x[1:].mean(0)
    err = {}
    for pre in (None, "nnm"):
        params = {} if pre is None else {"pre": pre}
        agg = make("fedavg", 10, 1, params).aggregate(x, ctx(x, 1))
        err[pre] = float((agg.update - benign_mean).norm())
    assert err["nnm"] < err[None] / 5  # nnm: the outlier reaches only its own row, 1/(N-f) of it
    # and with a robust rule the composition does not hurt
    med = make("median", 10, 1, {"pre": "nnm"}).aggregate(x, ctx(x, 1))
    assert float((med.update - benign_mean).norm()) < err[None] / 5


def test_pre_params_are_checked_and_stripped():
    for name in ["krum", "multi_krum", "trimmed_mean", "flame", "dnc", "fedavg", "skymask", "fldetector"]:
        cfg = build_config(overrides={"defense": name, "defense_params": {"pre": "nnm"},
                                      "data": {"dataset": "synthetic"}})
        d = build_defense(cfg)
        assert d.pre.pre == "nnm"
    with pytest.raises(ConfigError, match="unknown pre-aggregator"):
        build_config(overrides={"defense": "krum", "defense_params": {"pre": "shuffle"},
                                "data": {"dataset": "synthetic"}})
    with pytest.raises(ConfigError, match="bucket_size is a parameter of pre: bucketing"):
        build_config(overrides={"defense": "median", "defense_params": {"pre": "nnm", "bucket_size": 2},
                                "data": {"dataset": "synthetic"}})
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_config(overrides={"defense": "krum", "defense_params": {"pre": "nnm", "other": 1},
                                "data": {"dataset": "synthetic"}})
    plain = make("krum", 10, 2, {})
    assert plain.pre is None and "aggregate" not in vars(plain)


def test_bounded_defense_clamps_f_for_fewer_buckets(ctx):
    x = planted(n=10, bad=(0, 1, 2))
    agg = make("krum", 10, 3, {"pre": "bucketing", "bucket_size": 2}).aggregate(x, ctx(x, 3))
    assert agg.info["f_assumed"] == 3 and agg.info["f_used"] == 1  # 5 buckets: N > 2f + 2 -> f <= 1
    assert agg.accepted.shape == (10,)
