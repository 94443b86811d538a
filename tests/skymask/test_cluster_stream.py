"""The clustering's random state is its own stream per (seed, round) (issue 32, item 6)."""

from __future__ import annotations

import numpy as np
import torch

from skymask_ray.config import SkyMaskConfig
from skymask_ray.skymask import select
from skymask_ray.skymask.trainer import train_and_select

from .test_skymask import _FixedGram


def test_every_seed_and_round_pair_gets_its_own_clustering_state(monkeypatch):
    """The server's selection asks scikit-learn for a different state in every (seed, round): the old
    ``seed + round`` gave seed s, round r + 1 exactly the state of seed s + 1, round r."""
    b = (np.random.default_rng(0).random((21, 400)) < 0.5).astype(np.float64)
    seen: list[int] = []
    real = select.cluster_from_gram

    def spy(gram, seed, **kw):
        seen.append(seed)
        return real(gram, seed, **kw)

    monkeypatch.setattr(select, "cluster_from_gram", spy)
    states = {}
    for s in range(4):
        for r in range(4):
            train_and_select(_FixedGram(b @ b.T), lambda w, idx: (0.0, torch.zeros(3)), 4, 400,
                             SkyMaskConfig(mask_epochs=1), seed=s, round_idx=r)
            states[s, r] = seen[-1]
    assert all(states[s, r + 1] != states[s + 1, r] for s in range(3) for r in range(3))
    assert len(set(states.values())) == len(states)
    assert all(0 <= v < 2**32 for v in states.values())  # a valid scikit-learn random_state
    assert states[0, 0] == select.cluster_state(0, 0)
    # callers that draw their own states (the adaptive attack) pass them through unchanged
    select.select_masks(b @ b.T, 12345, SkyMaskConfig())
    assert seen[-1] == 12345


def test_keep_gram_hands_back_the_gram_the_selection_used_and_leaves_the_hash_alone():
    """``skymask.keep_gram`` returns the round's Gram (server row 0) for offline re-clustering: the very
    matrix the selection clustered, so re-clustering it reproduces the verdict; off, nothing is kept.
    It changes nothing a round computes, so results folders stay resumable under either value."""
    from skymask_ray.config import config_hash
    from skymask_ray.experiment import build_config

    b = (np.random.default_rng(1).random((21, 400)) < 0.5).astype(np.float64)
    b[1:6] = b[1]  # a group of identical masks for the cut to find
    cfg = SkyMaskConfig(mask_epochs=1, select="spectral", keep_gram=True)
    kept = train_and_select(_FixedGram(b @ b.T), lambda w, idx: (0.0, torch.zeros(3)), 4, 400, cfg, seed=2, round_idx=3)
    np.testing.assert_array_equal(kept.gram, b @ b.T)
    again = select.select_masks(kept.gram, 2, cfg, 3)
    np.testing.assert_array_equal(again.benign[1:], kept.accepted)
    off = train_and_select(_FixedGram(b @ b.T), lambda w, idx: (0.0, torch.zeros(3)), 4, 400,
                           SkyMaskConfig(mask_epochs=1, select="spectral"), seed=2, round_idx=3)
    assert off.gram is None
    np.testing.assert_array_equal(off.accepted, kept.accepted)
    assert config_hash(build_config(overrides={"skymask": {"keep_gram": True}})) == config_hash(build_config())
