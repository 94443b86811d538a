r"""An adaptive attack against SkyMask: the most harmful update whose mask the attacker's own SkyMask accepts.

Threat model: the attacker knows the defense is SkyMask, its configuration
(the ``skymask`` section of the config) and the architecture, sees all
benign updates (the omniscient model of every attack here) and holds a
small clean dataset of its own. This simulator has no separate attacker
data, so ``ctx.root`` stands in for it (the same size and distribution as
the server's root set, which makes the attacker's simulation a close but
not exact copy of the server's: the mask training of the server is
deterministic given its inputs, the GMM seed is the server's secret and the
attacker draws its own from ``ctx.generator``).

Design, once per round:

1. Harmful rows :math:`H` (f x P) from a composable model-poisoning ``base``
   attack (default ``min_max``, any ``base_params``, ``spread`` included).
2. Candidates interpolate between the benign mean and the harmful rows,
   :math:`G(\alpha) = \mu + \alpha (H - \mu)`, :math:`\alpha \in [0, \alpha_{\max}]`
   (``max_alpha`` > 1 extrapolates beyond the base attack).
3. For a candidate, the attacker runs SkyMask on its own copy: the server
   model :math:`w_0 = w_t - g_0`, the N client models with :math:`G(\alpha)`
   in the malicious rows, :func:`~skymask_ray.skymask.trainer.train_masks` on
   its clean data, then :func:`~skymask_ray.skymask.select.cluster_from_gram`.
   A candidate passes if at least ``accept_fraction`` of the malicious rows
   land in the server's cluster.
4. :math:`\alpha_{\max}` is tried first; if it fails, ``search_steps``
   bisection steps on :math:`[0, \alpha_{\max}]` keep the largest passing
   :math:`\alpha` (0, the benign mean, if none passes). The malicious rows
   are :math:`G(\alpha)`.

Cost: 1 + ``search_steps`` mask trainings (default 5) of the server's size
per round, on the driver's device. :math:`g_0` is ``ctx.server_update``
(``needs_server_update`` makes the round loop compute it even under other
defenses); with ``server_steps`` set the attacker instead trains its own
stand-in server model on its clean data for that many SGD steps (the
client's optimiser settings), a weaker attacker that does not see
:math:`g_0`. ``last_alpha`` and ``last_trials`` record the latest search.

How well it works is an empirical question the benchmarks answer; the
search only guarantees what its own simulation says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..clients.training import SGDSettings, train_sequential
from ..errors import ConfigError
from ..params import parse_params
from ..skymask.select import cluster_from_gram
from ..skymask.trainer import LocalShards, default_mask_lr, train_masks
from .base import ATTACKS, Attack, benign_stats, register_attack
from .finegrained import _trains
from .model_poisoning import _is_num

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import RoundContext


@dataclass
class AdaptiveParams:
    base: str = "min_max"
    base_params: dict[str, Any] = field(default_factory=dict)
    search_steps: int = 4  # bisection steps after the first try at max_alpha
    max_alpha: float = 1.0
    accept_fraction: float = 1.0  # share of malicious rows that must be accepted in the simulation
    server_steps: int | None = None  # None: use ctx.server_update; else train a stand-in g_0 for that many steps

    def validate(self) -> None:
        if not isinstance(self.base, str):
            raise ValueError(f"base must be an attack name, got {self.base!r}")
        if not isinstance(self.base_params, dict):
            raise ValueError(f"base_params must be a mapping, got {self.base_params!r}")
        if not isinstance(self.search_steps, int) or self.search_steps < 0:
            raise ValueError(f"search_steps must be an integer >= 0, got {self.search_steps!r}")
        if not _is_num(self.max_alpha) or self.max_alpha <= 0:
            raise ValueError(f"max_alpha must be > 0, got {self.max_alpha!r}")
        if not _is_num(self.accept_fraction) or not 0 < self.accept_fraction <= 1:
            raise ValueError(f"accept_fraction must be in (0, 1], got {self.accept_fraction!r}")
        if self.server_steps is not None and (not isinstance(self.server_steps, int) or self.server_steps < 1):
            raise ValueError(f"server_steps must be an integer >= 1 or null, got {self.server_steps!r}")


@register_attack("adaptive")
class Adaptive(Attack):
    """SkyMask-aware attack; see the module docstring for the threat model and the search."""

    Params = AdaptiveParams
    trains = False
    needs_server_update = True
    composable = False
    last_alpha: float | None = None
    last_trials: list[tuple[float, float]] | None = None  # (alpha, accepted share) per simulation

    @classmethod
    def resolve(cls, p: AdaptiveParams) -> type[Attack]:
        base_cls = ATTACKS.get(p.base)
        if not base_cls.composable or _trains(base_cls, p.base_params):
            raise ConfigError(f"attack 'adaptive': base {p.base!r} must be a model-poisoning attack (min_max, lie, ...)")
        return base_cls

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        p = parse_params(cls.Params, cfg.attack_params, "attack 'adaptive'")
        cls.resolve(p).check(dataclasses.replace(cfg, attack=p.base, attack_params=p.base_params))

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        super().__init__(params, cfg, num_classes)
        base_cfg = dataclasses.replace(cfg, attack=self.p.base, attack_params=self.p.base_params)
        self.base = self.resolve(self.p)(self.p.base_params, base_cfg, num_classes)

    def server_update(self, ctx: "RoundContext") -> torch.Tensor:
        """g_0 of the attacker's simulation: the server's, or its own stand-in (``server_steps``)."""
        if self.p.server_steps is None:
            if ctx.server_update is None:
                raise ValueError("attack 'adaptive' needs ctx.server_update (or set server_steps)")
            return ctx.server_update
        t = self.cfg.train
        s = SGDSettings(lr=t.local_lr, batch_size=t.batch_size, steps=self.p.server_steps, grad_clip=t.grad_clip)
        gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))
        upd, _ = train_sequential(ctx.model, ctx.spec, ctx.global_weights, [ctx.root], [gen], s, ctx.buffers)
        return upd[0]

    def simulate(self, updates: torch.Tensor, g0: torch.Tensor, ctx: "RoundContext", seed: int) -> torch.Tensor:
        """The clients (N,) that the attacker's own run of SkyMask puts in the server's cluster."""
        sky = self.cfg.skymask
        w = ctx.global_weights.to(updates.device)
        models = torch.cat([(w - g0.to(w.device))[None], w[None] - updates])
        shards = LocalShards(models, sky, default_mask_lr(sky, self.cfg.model))
        gen = torch.Generator().manual_seed(seed)
        train_masks(shards, ctx.model, ctx.spec, ctx.buffers, ctx.root, sky, gen, updates.device)
        clustering = cluster_from_gram(shards.gram().cpu().numpy(), seed=seed)
        return torch.from_numpy(clustering.benign[1:]).to(updates.device)

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "RoundContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        if ctx.model is None or ctx.root is None:
            raise ValueError("attack 'adaptive' needs ctx.model and ctx.root (its clean data)")
        _, mu, _ = benign_stats(updates, malicious)
        harmful = self.base.apply(updates, malicious, ctx)[malicious]
        g0 = self.server_update(ctx)
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator))
        trials: list[tuple[float, float]] = []

        def candidate(alpha: float) -> torch.Tensor:
            out = updates.clone()
            out[malicious] = mu + alpha * (harmful - mu)
            return out

        def passes(alpha: float) -> bool:
            share = float(self.simulate(candidate(alpha), g0, ctx, seed)[malicious].float().mean())
            trials.append((alpha, share))
            return share >= self.p.accept_fraction

        lo, hi = 0.0, float(self.p.max_alpha)
        if passes(hi):
            lo = hi
        else:
            for _ in range(self.p.search_steps):
                mid = (lo + hi) / 2
                if passes(mid):
                    lo = mid
                else:
                    hi = mid
        self.last_alpha, self.last_trials = lo, trials
        return candidate(lo)
