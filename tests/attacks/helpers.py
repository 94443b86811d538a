"""Shared helpers of the attack tests: small update matrices, configs and round contexts."""

from __future__ import annotations

import torch

from skymask_ray.config import ExperimentConfig
from skymask_ray.context import AttackContext
from skymask_ray.models import ParamSpec, build_model, buffers_of


def flat_spec(p: int) -> ParamSpec:
    """A spec of one parameter vector of length p (for attacks that ignore the architecture)."""
    return ParamSpec(("w",), (torch.Size([p]),), (0,), p)


def two_layer_spec() -> ParamSpec:
    """fc1 (4x3 + 4), fc10 (2x4 + 2), fc2 (3x2 + 3): 16 + 10 + 9 = 35 coordinates."""
    names = ("fc1.weight", "fc1.bias", "fc10.weight", "fc10.bias", "fc2.weight", "fc2.bias")
    shapes = tuple(torch.Size(s) for s in ((4, 3), (4,), (2, 4), (2,), (3, 2), (3,)))
    offsets, off = [], 0
    for s in shapes:
        offsets.append(off)
        off += s.numel()
    return ParamSpec(names, shapes, tuple(offsets), off)


def make_updates(
    n: int, f: int, p: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """N x P updates with a common drift plus per-client noise; the first f clients are malicious (rows zero)."""
    g = torch.Generator().manual_seed(seed)
    drift = torch.randn(p, generator=g, dtype=dtype)
    updates = drift + 0.5 * torch.randn(n, p, generator=g, dtype=dtype)
    malicious = torch.zeros(n, dtype=torch.bool)
    malicious[:f] = True
    updates[malicious] = 0.0
    return updates, malicious


def make_ctx(updates: torch.Tensor, malicious: torch.Tensor, spec: ParamSpec | None = None, seed: int = 0,
             **extra) -> AttackContext:
    spec = spec or flat_spec(updates.shape[1])
    return AttackContext(
        round=1,
        global_weights=torch.zeros(spec.numel, dtype=updates.dtype),
        spec=spec,
        num_clients=len(updates),
        num_malicious=int(malicious.sum()),
        generator=torch.Generator().manual_seed(seed),
        malicious=malicious,
        **extra,
    )


def make_cfg(attack: str = "none", params: dict | None = None, clients: int = 10, malicious_fraction: float = 0.2,
             **overrides) -> ExperimentConfig:
    cfg = ExperimentConfig(clients=clients, malicious_fraction=malicious_fraction, attack=attack,
                           attack_params=dict(params or {}), **overrides)
    cfg.data.dataset = "synthetic"
    return cfg


class TinyWorld:
    """A logistic-regression model on 8 features and 3 classes with clean root data: what adaptive needs."""

    def __init__(self, n: int = 8, f: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.model = build_model("lr", (8,), 3, seed=seed)
        self.spec = ParamSpec.of(self.model)
        self.w = self.spec.flatten(self.model)
        means = torch.randn(3, 8, generator=g)
        y = torch.arange(30) % 3
        self.root = (means[y] + 0.3 * torch.randn(30, 8, generator=g), y)
        self.updates = 0.05 * torch.randn(n, self.spec.numel, generator=g) + 0.02
        self.malicious = torch.zeros(n, dtype=torch.bool)
        self.malicious[:f] = True
        self.updates[self.malicious] = 0.0
        self.server_update = 0.02 + 0.01 * torch.randn(self.spec.numel, generator=g)

    def ctx(self, seed: int = 0) -> AttackContext:
        return AttackContext(
            round=1, global_weights=self.w.clone(), spec=self.spec, num_clients=len(self.updates),
            num_malicious=int(self.malicious.sum()), generator=torch.Generator().manual_seed(seed),
            server_update=self.server_update, malicious=self.malicious, model=self.model,
            buffers=buffers_of(self.model), root=self.root,
        )

