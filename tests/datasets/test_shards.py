"""Clients as seeds: a seeded client's samples depend on (seed, id) only and follow the partition's label law."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from skymask_ray.config import DataConfig
from skymask_ray.data import SeededShards, ShardTable, client_shards, split_clients
from skymask_ray.errors import ConfigError

C, S = 10, 50


def _pool(n: int = 6000, seed: int = 0, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels of a training set, the pool's indices): a pool that skips a root block at the front."""
    labels = np.random.default_rng(seed).choice(C, size=n, p=weights)
    return labels, np.arange(100, n)


def _shards(partition: str, n_clients: int = 10**8, seed: int = 7, labels=None, idx=None, **kw) -> SeededShards:
    if labels is None:
        labels, idx = _pool()
    cfg = DataConfig(partition=partition, samples_per_client=S, **kw)
    return SeededShards.build(labels, idx, n_clients, S, cfg, C, seed)


@pytest.mark.parametrize("partition", ["bias", "dirichlet", "iid"])
def test_a_client_is_its_seed_whatever_asks_or_when(partition):
    """Same (seed, id): same indices from a fresh object, a pickled copy (another worker), in any order;
    another seed or id: others. Indices are sorted, S of them, inside the pool (never the root set)."""
    a, b = _shards(partition), _shards(partition)
    ids = [0, 1, 12345, 10**8 - 1, 5]
    first = [a.indices(k) for k in ids]
    assert all(np.array_equal(x, y) for x, y in zip(first, [b.indices(k) for k in reversed(ids)][::-1]))
    c = pickle.loads(pickle.dumps(a))
    assert all(np.array_equal(x, c.indices(k)) for x, k in zip(first, ids))
    assert all(np.array_equal(x, a.indices(k)) for x, k in zip(first, ids))  # asked again (a later round)
    assert not np.array_equal(a.indices(3), _shards(partition, seed=8).indices(3))
    assert not np.array_equal(a.indices(3), a.indices(4))
    assert all(len(x) == S and np.all(np.diff(x) >= 0) and x.min() >= 100 and x.max() < 6000 for x in first)
    with pytest.raises(IndexError):
        a.indices(10**8)


def test_deriving_a_client_costs_its_samples_not_the_population():
    labels, idx = _pool()
    tracemalloc.start()
    shards = SeededShards.build(labels, idx, 10**12, S, DataConfig(partition="dirichlet", samples_per_client=S), C, 0)
    for k in range(0, 10**12, 10**10):
        shards.indices(k)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * len(idx) + 256 * 1024  # the pool grouped by label, plus O(S) per client


def test_bias_law_group_share_b_and_the_rest_uniform():
    """b of each client's samples carry its group's label, the others spread evenly over the other C - 1
    labels, and the groups are uniform over clients."""
    labels, idx = _pool()
    b, n = 0.5, 4000
    shards = _shards("bias", labels=labels, idx=idx, bias=b)
    counts = np.array([np.bincount(labels[shards.indices(k)], minlength=C) for k in range(n)])
    group = counts.argmax(axis=1)
    own = counts[np.arange(n), group].sum() / (n * S)
    assert abs(own - b) < 0.01  # se 0.001 (the argmax picks the group in all but a handful of clients)
    assert stats.chisquare(np.bincount(group, minlength=C)).pvalue > 1e-3
    offset = np.zeros(C, dtype=np.int64)  # other labels by their distance from the group
    for k in range(n):
        offset += np.roll(counts[k], -group[k])
    assert stats.chisquare(offset[1:]).pvalue > 1e-3
    iid = _shards("bias", labels=labels, idx=idx, bias=1 / C)
    top = np.mean([np.bincount(labels[iid.indices(k)], minlength=C).max() / S for k in range(500)])
    assert top < 0.3 < own  # b = 1/C is IID: no label dominates


def test_dirichlet_law_mean_and_spread_of_a_clients_label_share():
    """A client's share of label c has mean 1/C and variance Var(p)(1 - 1/S) + m(1 - m)/S, with
    Var(p) = m(1 - m)/(C alpha + 1), m = 1/C: the Dirichlet-multinomial's."""
    labels, idx = _pool(weights=None)
    n, m = 4000, 1 / C
    for alpha in (0.5, 5.0):
        shards = _shards("dirichlet", labels=labels, idx=idx, alpha=alpha)
        share = np.array([np.bincount(labels[shards.indices(k)], minlength=C) for k in range(n)]) / S
        want = m * (1 - m) / (C * alpha + 1) * (1 - 1 / S) + m * (1 - m) / S
        assert abs(share.mean() - m) < 1e-9  # shares sum to 1
        assert abs(share.mean(axis=0) - m).max() < 0.01
        assert abs(share.var() / want - 1) < 0.1, (alpha, share.var(), want)


def test_iid_law_follows_the_pools_label_frequencies_and_each_sample_is_uniform():
    weights = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.04, 0.01])
    labels, idx = _pool(n=1100, weights=weights)
    shards = _shards("iid", labels=labels, idx=idx)
    drawn = np.concatenate([shards.indices(k) for k in range(4000)])
    pool_freq = np.bincount(labels[idx], minlength=C) / len(idx)
    assert stats.chisquare(np.bincount(labels[drawn], minlength=C), pool_freq * len(drawn)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(drawn - 100, minlength=len(idx))).pvalue > 1e-3


def test_a_label_the_pool_lacks_draws_from_the_whole_pool():
    labels, idx = _pool()
    labels[labels == 9] = 0
    shards = _shards("bias", labels=labels, idx=idx, bias=0.9)
    drawn = [shards.indices(k) for k in range(200)]
    assert all(len(d) == S and d.min() >= 100 for d in drawn)


def test_subject_cannot_be_seeded():
    labels, idx = _pool()
    with pytest.raises(ConfigError, match="subject"):
        SeededShards.build(labels, idx, 10**6, S, DataConfig(partition="subject", samples_per_client=S), C, 0)


@pytest.mark.parametrize("n, s", [(100, None), (100, 50), (118, 50)])
def test_the_split_table_stays_where_it_fits(n, s):
    """N x S within the pool: the materialised split, exactly split_clients on the same stream (so the paper's
    presets and every recorded full-participation row are unchanged); beyond it: seeded clients."""
    labels, idx = _pool()
    cfg = DataConfig(partition="bias", samples_per_client=s)
    got = client_shards(labels, idx, n, cfg, C, np.random.default_rng(4), seed=0)
    want = split_clients(labels, idx, n, cfg, C, np.random.default_rng(4))
    assert isinstance(got, ShardTable) and all(np.array_equal(got.indices(k), w) for k, w in enumerate(want))
    assert got.median_size() == sorted(len(w) for w in want)[(n - 1) // 2]
    over = client_shards(labels, idx, 119, DataConfig(partition="bias", samples_per_client=50), C,
                         np.random.default_rng(4), seed=0)
    assert isinstance(over, SeededShards) and over.median_size() == 50 and over.total == 119 * 50
