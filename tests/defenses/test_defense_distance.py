"""krum, multi_krum and bulyan: planted answers, brute-force references, assumption errors."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from skymask_ray.defenses import DEFENSES
from skymask_ray.errors import ConfigError
from skymask_ray.linalg import krum_scores, pairwise_sq_distances

from .helpers import make_cfg


def _planted(n_benign: int, n_bad: int, p: int = 6, seed: int = 0) -> torch.Tensor:
    """A tight cluster whose exact centre is row 0, followed by far-away attackers."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(p, generator=gen)
    offsets = torch.randn((n_benign - 1) // 2, p, generator=gen)
    benign = torch.cat([centre[None], centre + offsets, centre - offsets])
    bad = centre + 20 + torch.randn(n_bad, p, generator=gen)
    return torch.cat([benign, bad])


def _np_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(d[i], i))[: n - f - 2].sum() for i in range(n)])


def test_krum_scores_match_brute_force():
    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(1)).double()
    np.testing.assert_allclose(krum_scores(pairwise_sq_distances(x), 2).numpy(), _np_krum_scores(x.numpy(), 2), rtol=1e-9)


def test_krum_picks_the_planted_centre(defense, ctx):
    x = _planted(7, 2)
    agg = defense("krum", 9, 2).aggregate(x, ctx(x, 2))
    assert agg.info["selected"] == 0
    assert agg.accepted.tolist() == [True] + [False] * 8
    torch.testing.assert_close(agg.update, x[0])


@pytest.mark.parametrize("m,expected", [(None, 7), (3, 3)])
def test_multi_krum_count_and_selection(m, expected, defense, ctx):
    x = _planted(7, 2)
    params = {} if m is None else {"m": m}
    agg = defense("multi_krum", 9, 2, params).aggregate(x, ctx(x, 2))
    assert int(agg.accepted.sum()) == expected
    assert not agg.accepted[7:].any()
    torch.testing.assert_close(agg.update, x[agg.accepted].mean(0))
    order = np.argsort(_np_krum_scores(x.double().numpy(), 2), kind="stable")[:expected]
    assert sorted(order.tolist()) == torch.nonzero(agg.accepted).flatten().tolist()


def test_multi_krum_with_f_zero_is_the_mean(defense, ctx):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    agg = defense("multi_krum", 5, 0).aggregate(x, ctx(x, 0))
    assert agg.accepted.all()
    torch.testing.assert_close(agg.update, x.mean(0))


def _np_bulyan(x: np.ndarray, f: int) -> tuple[list[int], np.ndarray]:
    n = len(x)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        sub = x[remaining]
        k = min(max(len(sub) - f - 2, 1), len(sub) - 1)
        d = ((sub[:, None] - sub[None]) ** 2).sum(-1)
        scores = [np.sort(np.delete(d[i], i))[:k].sum() if k > 0 else 0.0 for i in range(len(sub))]
        chosen.append(remaining.pop(int(np.argmin(scores))))
    sel = x[chosen]
    beta = n - 4 * f
    med = np.median(sel, axis=0)
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        closest = np.argsort(np.abs(sel[:, j] - med[j]), kind="stable")[:beta]
        out[j] = sel[closest, j].mean()
    return chosen, out


def test_bulyan_selection_and_aggregate_match_brute_force(defense, ctx):
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(9, 12, generator=gen), 20 + torch.randn(2, 12, generator=gen)])
    agg = defense("bulyan", 11, 2).aggregate(x, ctx(x, 2))
    chosen, expected = _np_bulyan(x.double().numpy(), 2)
    assert agg.info["selected"] == chosen
    assert set(torch.nonzero(agg.accepted).flatten().tolist()) <= set(chosen)
    assert not agg.accepted[9:].any()
    assert agg.info["theta"] == 7 and agg.info["beta"] == 3
    np.testing.assert_allclose(agg.update.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_bulyan_with_f_zero_is_the_mean(defense, ctx):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    agg = defense("bulyan", 6, 0).aggregate(x, ctx(x, 0))
    torch.testing.assert_close(agg.update, x.mean(0))


@pytest.mark.parametrize(
    "name,n,f,assumption",
    [
        ("bulyan", 10, 2, "N >= 4f + 3"),
        ("krum", 6, 2, "N > 2f + 2"),
        ("multi_krum", 8, 3, "N > 2f + 2"),
        ("trimmed_mean", 10, 5, "f < N/2"),
    ],
)
def test_impossible_n_and_f_fail_at_config_time(name, n, f, assumption):
    with pytest.raises(ConfigError) as err:
        DEFENSES.get(name).check(make_cfg(n, f, name))
    msg = str(err.value)
    assert assumption in msg and f"N={n}" in msg and f"f={f}" in msg and "degrade" in msg
    assert "\n" not in msg


def test_check_passes_at_the_bound():
    for name, n, f in [("bulyan", 11, 2), ("krum", 7, 2), ("multi_krum", 7, 2), ("trimmed_mean", 11, 5)]:
        DEFENSES.get(name).check(make_cfg(n, f, name))


def test_no_f_satisfies_the_assumption_even_with_degrade():
    with pytest.raises(ConfigError, match="which no f satisfies"):
        DEFENSES.get("bulyan").check(make_cfg(2, 0, "bulyan", {"degrade": True}))


def test_degrade_clamps_f_and_records_it(defense, ctx):
    x = _planted(9, 1, seed=5)
    agg = defense("bulyan", 10, 2, {"degrade": True}).aggregate(x, ctx(x, 2))
    assert agg.info["f_assumed"] == 2 and agg.info["f_used"] == 1
    assert agg.info["theta"] == 8 and agg.info["beta"] == 6
    krum = defense("krum", 6, 2, {"degrade": True}).aggregate(x[:6], ctx(x[:6], 2))
    assert krum.info["f_used"] == 1


def test_runtime_violation_without_degrade_is_a_clear_error(defense, ctx):
    x = torch.randn(10, 3)
    bulyan = defense("bulyan", 11, 2)
    bulyan.settings = dataclasses.replace(bulyan.settings, cohort_size=10)  # 10 clients, but the context claims f = 3
    with pytest.raises(ConfigError, match="N >= 4f \\+ 3"):
        bulyan.aggregate(x, ctx(x, 3))


def test_dropped_rows_clamp_f_instead_of_failing(defense, ctx):
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(6))
    bulyan = defense("bulyan", 11, 2)  # 2 invalid rows were dropped by the loop: N = 9 < 4f + 3
    agg = bulyan.aggregate(x, ctx(x, 2))
    assert agg.info["f_used"] == 1


def test_params_are_validated():
    for name, params in [("multi_krum", {"m": 0}), ("trimmed_mean", {"beta": -1}), ("krum", {"degrade": "yes"}),
                         ("krum", {"typo": 1})]:
        with pytest.raises(ConfigError):
            DEFENSES.get(name).check(make_cfg(20, 2, name, params))
    with pytest.raises(ConfigError, match="m <= N"):
        DEFENSES.get("multi_krum").check(make_cfg(20, 2, "multi_krum", {"m": 21}))


def test_every_permutation_of_planted_rows_gives_the_same_krum_choice(defense, ctx):
    x = _planted(5, 1, seed=7)
    for perm in itertools.islice(itertools.permutations(range(6)), 0, 720, 97):
        y = x[list(perm)]
        agg = defense("krum", 6, 1).aggregate(y, ctx(y, 1))
        torch.testing.assert_close(agg.update, x[0])


def test_incremental_bulyan_selection_equals_naive_iterated_krum():
    from skymask_ray.defenses.distance import bulyan_select

    for seed in range(25):
        gen = torch.Generator().manual_seed(seed)
        n = int(torch.randint(3, 30, (1,), generator=gen))
        for f in sorted({0, 1, (n - 3) // 4}):
            x = torch.randn(n, 4, generator=gen).double()
            d = pairwise_sq_distances(x)
            remaining, naive = list(range(n)), []
            for _ in range(n - 2 * f):
                sub = d[remaining][:, remaining]
                naive.append(remaining.pop(int(krum_scores(sub, f).argmin())))
            fast = bulyan_select(d, f, n - 2 * f).tolist()
            assert sorted(fast) == sorted(naive)  # the same set (the last picks may be exact ties)
            assert fast[: len(fast) // 2] == naive[: len(naive) // 2]
