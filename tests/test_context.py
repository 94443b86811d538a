"""The attack's and the defense's views of a round: frozen, and the defense's has no ground truth."""

import dataclasses

import pytest
import torch

from skymask_ray.context import AttackContext, DefenseContext
from skymask_ray.defenses import build_defense
from skymask_ray.experiment import build_config


def _dctx(n: int = 6, p: int = 4) -> DefenseContext:
    return DefenseContext(round=1, global_weights=torch.zeros(p), spec=None, num_clients=n, declared_f=1,
                          generator=torch.Generator().manual_seed(0))


def test_contexts_are_frozen_and_the_defense_cannot_see_who_is_malicious():
    ctx = _dctx()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.declared_f = 0
    with pytest.raises(AttributeError):
        ctx.malicious  # noqa: B018
    assert "malicious" in {f.name for f in dataclasses.fields(AttackContext)}
    assert not {"malicious", "num_malicious", "root", "model"} & {f.name for f in dataclasses.fields(DefenseContext)}


@pytest.mark.parametrize("name", ["fedavg", "median", "trimmed_mean", "krum", "multi_krum", "geomed", "dnc",
                                  "centered_clipping", "pca_kmeans", "flame"])
def test_defenses_aggregate_from_the_defense_context_alone(name):
    cfg = build_config(overrides={"data": {"dataset": "synthetic"}, "model": "mlp", "clients": 12,
                                  "malicious_fraction": 0.1, "defense": name})
    updates = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    agg = build_defense(cfg).aggregate(updates, _dctx(12))
    assert agg.update.shape == (4,) and agg.accepted.shape == (12,)
