"""Cross-device populations: cohorts, sampled attackers, dropouts, declared f, resume, sampled shards."""

from __future__ import annotations

import numpy as np
import pytest

from skymask_ray.errors import ConfigError
from skymask_ray.experiment import build_config
from skymask_ray.population import Population, malicious_population

BASE = {"data": {"dataset": "digits", "root_size": 50}, "model": "mlp", "clients": 30, "workers": 2,
        "malicious_fraction": 0.2, "train": {"local_lr": 0.5, "batch_size": 16, "grad_clip": None}}


def _pop(n=1000, k=50, sampling="pool", fraction=0.2, dropout=0.0, seed=0) -> Population:
    mal = malicious_population(n, round(n * fraction), "random", seed)
    return Population(mal, k, sampling, fraction, dropout, seed)


def test_cohorts_are_seeded_per_round_and_full_participation_draws_nothing():
    a, b = _pop(), _pop()
    assert all(np.array_equal(a.cohort(r), b.cohort(r)) for r in range(1, 6))
    assert not np.array_equal(a.cohort(1), a.cohort(2))
    assert all(len(np.unique(a.cohort(r))) == 50 and np.all(np.diff(a.cohort(r)) > 0) for r in range(1, 6))
    assert np.array_equal(_pop(n=40, k=40).cohort(7), np.arange(40))
    assert np.array_equal(a.cohort(3), _pop(seed=0).cohort(3)) and not np.array_equal(a.cohort(3), _pop(seed=1).cohort(3))


def test_fixed_holds_exactly_k_fraction_and_pool_has_the_right_expectation():
    fixed, pool = _pop(sampling="fixed"), _pop(sampling="pool")
    assert {int(fixed.is_malicious(fixed.cohort(r)).sum()) for r in range(1, 60)} == {10}
    counts = np.array([pool.is_malicious(pool.cohort(r)).sum() for r in range(1, 801)])
    assert abs(counts.mean() - 10) < 0.35 and counts.std() > 1.5  # hypergeometric: mean K f/N, it varies


def test_dropouts_are_seeded_and_at_the_right_rate():
    p = _pop(dropout=0.3)
    c = p.cohort(1)
    assert np.array_equal(p.dropped(c, 4), _pop(dropout=0.3).dropped(c, 4))
    rate = np.mean([p.dropped(p.cohort(r), r).mean() for r in range(1, 400)])
    assert abs(rate - 0.3) < 0.02
    assert not _pop(dropout=0.0).dropped(c, 1).any()


@pytest.mark.parametrize("over, needle", [({"cohort": 31}, "cohort"), ({"cohort": 1}, "cohort"),
                                          ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"),
                                          ({"data": {"dataset": "digits", "samples_per_client": 0}}, "samples_per_client"),
                                          ({"malicious_sampling": "some"}, "malicious_sampling"),
                                          ({"declared_f": 30}, "declared_f")])
def test_bad_population_values_are_one_line(over, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        build_config(overrides={**BASE, **over})
    assert "\n" not in str(err.value)


def test_declared_f_defaults_to_the_cohort_share():
    cfg = build_config(overrides={**BASE, "clients": 1000, "cohort": 50, "data": {"dataset": "digits"}})
    assert cfg.num_declared_f == 10 and cfg.num_malicious == 200
    assert build_config(overrides={**BASE, "declared_f": 3}).num_declared_f == 3


@pytest.mark.parametrize("selection", ["first", "random"])
@pytest.mark.parametrize("n, fraction", [(1000, 0.2), (50_000, 0.01), (40, 0.5), (1, 0.0), (2**12 + 1, 0.3)])
def test_malicious_set_membership_ranks_and_fixed_cohorts_agree(selection, n, fraction):
    """Exactly f attackers; membership, ranks, the j-th attacker / benign client and fixed cohorts agree with
    the (N,) bool mask they stand for; the first f are clients 0 .. f-1."""
    f = round(n * fraction)
    mal = malicious_population(n, f, selection, 3)
    mask = mal.mask(np.arange(n))
    assert mask.sum() == f and (selection == "random" or mask[:f].all())
    assert np.array_equal(mal.sorted_ids(), np.flatnonzero(mask))
    assert np.array_equal(np.sort(mal.nth_benign(np.arange(n - f))), np.flatnonzero(~mask))
    assert sorted(mal.rank(int(k)) for k in np.flatnonzero(mask)) == list(range(f))  # a bijection onto 0 .. f-1
    assert all(mal.rank(int(mal.nth_malicious(np.array([j]))[0])) == j for j in range(min(f, 5)))
    if f < n:
        assert mal.rank(int(np.flatnonzero(~mask)[0])) is None
    k = min(30, n)
    fixed = Population(mal, k, "fixed", fraction, 0.0, 3)
    for r in range(1, 6):
        c = fixed.cohort(r)
        assert len(np.unique(c)) == k and mask[c].sum() == min(int(round(k * fraction)), f)


def test_the_random_malicious_set_is_a_seeded_uniform_draw():
    """Each client is an attacker with probability f/N (chi-square over 20 blocks of ids, 200 seeds), the set
    depends on the seed only, and a permutation is a bijection of 0 .. N-1 for awkward N."""
    from skymask_ray.population import SeededPermutation

    n, f = 1000, 100
    counts = np.zeros(20)
    for seed in range(200):
        ids = malicious_population(n, f, "random", seed).sorted_ids()
        counts += np.bincount(ids // 50, minlength=20)
    expected = 200 * f / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8  # 19 degrees of freedom, p = 0.001
    a, b = (malicious_population(n, f, "random", 7).sorted_ids() for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, malicious_population(n, f, "random", 8).sorted_ids())
    for size in (1, 2, 3, 5, 17, 1000, 2**10, 2**10 + 1):
        perm = SeededPermutation.of(size, 0, "test")
        image = perm(np.arange(size))
        assert np.array_equal(np.sort(image), np.arange(size))
        assert np.array_equal(perm.inverse(image), np.arange(size))


def test_a_cohort_of_a_huge_population_holds_nothing_per_client():
    import tracemalloc

    tracemalloc.start()
    pops = [Population(malicious_population(10**9, 2 * 10**8, sel, 0), 100, "fixed", 0.2, 0.1, 0)
            for sel in ("first", "random")]
    cohorts = [(pop, pop.cohort(r)) for pop in pops for r in range(1, 4)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1024**2  # O(K): 10^9 clients would need 1 GB for a mask alone, a random set 1.6 GB of ids
    assert all(len(c) == 100 and pop.is_malicious(c).sum() == 20 and c.max() < 10**9 for pop, c in cohorts)


@pytest.mark.slow
def test_sampled_run_rows_dropouts_declared_f_and_resume(ray_cluster, tmp_path):
    from skymask_ray.results import read_parquet
    from skymask_ray.simulation import Simulation, run_experiment

    over = {**BASE, "cohort": 12, "dropout": 0.25, "attack": "min_max", "defense": "krum", "rounds": 4,
            "defense_params": {"degrade": True}}
    cfg = build_config(overrides=over)
    seen: list[tuple[int, int]] = []
    with Simulation(cfg, tmp_path / "spy") as sim:
        inner = sim.defense.aggregate

        def spy(updates, ctx):
            seen.append((ctx.declared_f, len(updates)))
            return inner(updates, ctx)

        sim.defense.aggregate = spy
        sim.run()
    rows = read_parquet(tmp_path / "spy" / "rounds.parquet").to_pylist()
    assert [f for f, _ in seen] == [cfg.num_declared_f] * len(seen) == [round(12 * 0.2)] * len(seen)
    for r in rows:
        reported = r["cohort"] - r["dropped"]
        assert r["cohort"] == 12 and r["tp"] + r["fp"] + r["tn"] + r["fn"] == reported
        assert r["tp"] + r["fn"] <= r["malicious_in_cohort"]
        assert r["trained_clients"] == reported - (r["tp"] + r["fn"])  # crafted attackers and dropouts do not train
        assert (r["tpr"] is None) == (r["tp"] + r["fn"] == 0)
    assert sum(r["dropped"] for r in rows) > 0
    full = read_parquet(run_experiment(cfg, tmp_path / "full")).to_pylist()
    run_experiment(build_config(overrides={**over, "rounds": 2}), tmp_path / "part")
    resumed = read_parquet(run_experiment(cfg, tmp_path / "part", resume=True)).to_pylist()
    keys = ["round", "accuracy", "tp", "fp", "tn", "fn", "cohort", "malicious_in_cohort", "dropped"]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    assert [[r[k] for k in keys] for r in full] == [[r[k] for k in keys] for r in rows]
