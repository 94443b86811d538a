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
