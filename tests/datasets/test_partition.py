"""Data splits: the paper's bias split, Dirichlet, IID, and the root set."""

import numpy as np
import pytest

from skymask_ray.config import DataConfig
from skymask_ray.data.partition import bias_split, dirichlet_split, iid_split, split_clients, split_root
from skymask_ray.errors import ConfigError


def _labels(n=60000, c=10, seed=0):
    return np.random.default_rng(seed).integers(0, c, size=n)


@pytest.mark.parametrize("bias", [0.1, 0.5, 0.8])
def test_bias_split_reproduces_label_proportions(bias):
    """Each group of clients gets its own label with probability b, every other label with (1-b)/(C-1)."""
    labels = _labels()
    idx = np.arange(len(labels))
    parts = bias_split(labels, idx, 100, bias, 10, np.random.default_rng(1))
    assert sorted(np.concatenate(parts).tolist()) == idx.tolist()  # a partition: every sample once
    # Undo the client permutation: a client's group is its majority label when b > 1/C.
    for k, p in enumerate(parts):
        counts = np.bincount(labels[p], minlength=10) / max(len(p), 1)
        if bias > 0.1 + 0.05:
            g = counts.argmax()
            assert abs(counts[g] - bias) < 0.1
    pooled = np.zeros((10, 10))
    for p in parts:
        counts = np.bincount(labels[p], minlength=10)
        pooled[counts.argmax()] += counts
    if bias > 0.15:
        frac = pooled / pooled.sum(1, keepdims=True)
        assert np.allclose(np.diag(frac), bias, atol=0.02)
        off = frac[~np.eye(10, dtype=bool)]
        assert np.allclose(off, (1 - bias) / 9, atol=0.02)


def test_bias_split_is_iid_at_one_over_c():
    labels = _labels()
    parts = bias_split(labels, np.arange(len(labels)), 50, 0.1, 10, np.random.default_rng(2))
    fracs = np.array([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
    assert np.abs(fracs - 0.1).max() < 0.06


def test_bias_split_fewer_clients_than_classes():
    labels = _labels(5000)
    parts = bias_split(labels, np.arange(5000), 3, 0.5, 10, np.random.default_rng(0))
    assert len(parts) == 3 and sum(len(p) for p in parts) == 5000


def test_root_set_label_fraction_and_disjoint():
    labels = _labels()
    root, rest = split_root(labels, 100, 0.3, 10, np.random.default_rng(0))
    counts = np.bincount(labels[root], minlength=10)
    assert len(root) == 100 and counts[1] == 30
    assert all(c in (7, 8) for i, c in enumerate(counts) if i != 1)
    assert len(np.intersect1d(root, rest)) == 0 and len(root) + len(rest) == len(labels)
    root_u, _ = split_root(labels, 100, 0.1, 10, np.random.default_rng(0))
    assert (np.bincount(labels[root_u], minlength=10) == 10).all()


def test_dirichlet_small_alpha_is_skewed_and_complete():
    labels = _labels(20000)
    idx = np.arange(20000)
    skewed = dirichlet_split(labels, idx, 20, 0.1, 10, np.random.default_rng(0))
    flat = dirichlet_split(labels, idx, 20, 1000.0, 10, np.random.default_rng(0))
    assert sorted(np.concatenate(skewed).tolist()) == idx.tolist()

    def top_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in parts if len(p)])

    assert top_share(skewed) > 0.4 > 0.15 > top_share(flat)


def test_iid_and_cap():
    labels = _labels(1000)
    parts = iid_split(np.arange(1000), 7, np.random.default_rng(0))
    assert {len(p) for p in parts} <= {142, 143}
    capped = split_clients(labels, np.arange(1000), 4, DataConfig(partition="iid", samples_per_client=50), 10,
                           np.random.default_rng(0))
    assert all(len(p) == 50 for p in capped)


def test_root_too_large_is_config_error():
    with pytest.raises(ConfigError, match="root_size"):
        split_root(_labels(50), 60, 0.1, 10, np.random.default_rng(0))
