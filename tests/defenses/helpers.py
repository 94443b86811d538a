"""Shared helpers of the defense tests: a config with exact N and f, a round context, a defense."""

from __future__ import annotations

from typing import Any

import torch

from skymask_ray.config import ExperimentConfig
from skymask_ray.context import DefenseContext
from skymask_ray.defenses import DEFENSES, Defense, defense_settings
from skymask_ray.models import ParamSpec


def make_cfg(n: int, f: int, defense: str = "fedavg", params: dict[str, Any] | None = None) -> ExperimentConfig:
    """A config whose ``num_malicious`` is exactly ``f``."""
    cfg = ExperimentConfig(clients=n, malicious_fraction=f / n, defense=defense, defense_params=dict(params or {}))
    assert cfg.num_malicious == f
    return cfg


def make_ctx(updates: torch.Tensor, f: int, round: int = 1, seed: int = 0, **kw: Any) -> DefenseContext:
    """A round context for the stacked ``updates`` with f assumed malicious."""
    n, p = updates.shape
    spec = kw.pop("spec", None) or ParamSpec(("w",), (torch.Size([p]),), (0,), p)
    weights = kw.pop("global_weights", None)
    return DefenseContext(
        round=round, global_weights=torch.zeros(p) if weights is None else weights, spec=spec, num_clients=n,
        declared_f=f, generator=torch.Generator().manual_seed(1000 * seed + round), **kw,
    )


def make_defense(name: str, n: int, f: int, params: dict[str, Any] | None = None) -> Defense:
    """Check the config like the CLI does, then build the defense."""
    cfg = make_cfg(n, f, name, params)
    cls = DEFENSES.get(name)
    cls.check(cfg)
    return cls(defense_settings(cfg))
