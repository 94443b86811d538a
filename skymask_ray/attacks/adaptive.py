r"""An adaptive attack against SkyMask: the most harmful update whose mask the attacker's own SkyMask accepts.

Threat model: the attacker knows that the defense is SkyMask, its ``skymask``
settings and the architecture, sees every benign update (the omniscient model
of every attack here) and holds clean data of its own; ``ctx.root`` stands in
for it (the server's GMM seed stays secret: the attacker draws its own from
``ctx.generator``).

How it is built, once per round:

1. Harmful rows :math:`H` (f x P) from a model-poisoning ``base`` attack whose
   clients do not train (default ``min_max``; any ``base_params``, ``spread``
   included; ``layer``/``parameter`` with ``rest: mean`` too).
2. Anchors :math:`a_k`: ``anchor: benign`` (default) gives each attacker its
   own copy of a benign update (identical rows would form their own mask
   cluster); ``anchor: mean`` starts all of them at :math:`\mu`.
3. Candidates :math:`G_k(\alpha) = a_k + \alpha (H_k - \mu)`.
4. A candidate's score: the attacker runs SkyMask on its own copy
   (:func:`~skymask_ray.skymask.trainer.train_masks` on the server model
   :math:`w_0 = w_t - g_0` and the N client models, then
   :func:`~skymask_ray.skymask.select.select_masks`, the server's rule, under
   ``cluster_seeds`` GMM seeds) and takes the share of malicious rows in the
   server's cluster, averaged over the seeds.
5. With ``anchor: benign`` a run at :math:`\alpha = 0` first finds the benign
   rows accepted under every seed, and the anchors are redrawn among them.
6. :math:`\alpha = \alpha_{\max} 2^{-i}`, i = 0..``search_steps``, are tried in
   turn, stopping once every attacker passes (a grid, not a bisection:
   acceptance is not monotone in :math:`\alpha`); the attacker sends the
   candidate maximising :math:`\alpha \cdot \text{share}` among those with
   share >= ``accept_fraction``, else the anchors (:math:`\alpha = 0`).

Cost: at most 2 + ``search_steps`` mask trainings of the server's size per
round, on the driver's device. :math:`g_0` is ``ctx.server_update``
(``needs_server_update`` makes the round loop compute it under any defense); with
``server_steps`` the attacker trains its own stand-in server model for that
many SGD steps instead (a weaker attacker). ``last_alpha`` and
``last_trials`` (alpha, share) record the latest search.

What it achieves against the server's own mask trainer, measured:
``benchmarks/results/adaptive_attack.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..clients.training import SGDSettings, train_sequential
from ..errors import ConfigError
from ..params import bounded, parse_params
from ..skymask.select import select_masks
from ..skymask.trainer import LocalShards, RootLoss, default_mask_lr, stack_updates, train_masks
from .base import ATTACKS, Attack, benign_stats, register_attack

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import AttackContext


@dataclass
class AdaptiveParams:
    base: str = "min_max"
    base_params: dict[str, Any] = field(default_factory=dict)
    search_steps: int = bounded(4, ge=0)  # alphas tried: max_alpha / 2**i for i = 0..search_steps
    max_alpha: float = bounded(1.0, gt=0)
    # least share of malicious rows accepted (mean over GMM seeds) for a candidate
    accept_fraction: float = bounded(0.5, gt=0, le=1)
    # None: use ctx.server_update; else train a stand-in g_0 for that many steps
    server_steps: int | None = bounded(None, ge=1)
    cluster_seeds: int = bounded(5, ge=1)  # GMM seeds each candidate must pass (the server's seed is unknown)
    # benign (each attacker starts from its own copy of a benign update) | mean
    anchor: Literal["benign", "mean"] = "benign"


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
        if issubclass(base_cls, Adaptive) or base_cls.trains_with(p.base_params):
            raise ConfigError(
                f"attack 'adaptive': base {p.base!r} must be a model-poisoning attack (min_max, lie, ...)"
            )
        return base_cls

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        p = parse_params(cls.Params, cfg.attack_params, "attack 'adaptive'")
        cls.resolve(p).check(dataclasses.replace(cfg, attack=p.base, attack_params=p.base_params))

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        super().__init__(params, cfg, num_classes)
        base_cfg = dataclasses.replace(cfg, attack=self.p.base, attack_params=self.p.base_params)
        self.base = self.resolve(self.p)(self.p.base_params, base_cfg, num_classes)

    def server_update(self, ctx: "AttackContext") -> torch.Tensor:
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

    def simulate(self, updates: torch.Tensor, g0: torch.Tensor, ctx: "AttackContext", seeds: list[int]) -> torch.Tensor:
        """(len(seeds), N): the clients the attacker's own SkyMask puts in the server's cluster, per GMM seed.

        One mask training (seeded by ``seeds[0]``), then one clustering of its
        Gram matrix per seed: the server's GMM seed is unknown to the attacker
        and the split can depend on it.
        """
        sky = self.cfg.skymask
        w = ctx.global_weights.to(updates.device)
        shards = LocalShards(stack_updates(updates, g0), w, sky, default_mask_lr(sky, self.cfg.model))
        gen = torch.Generator().manual_seed(seeds[0])
        loss = RootLoss(ctx.model, ctx.spec, ctx.buffers, ctx.root, updates.device)
        train_masks(shards, loss, len(loss), sky, gen)
        gram = shards.gram().cpu().numpy()
        accepted = [torch.from_numpy(select_masks(gram, s, sky).benign[1:]) for s in seeds]
        return torch.stack(accepted).to(updates.device)

    def anchors(self, pool: torch.Tensor, mu: torch.Tensor, f: int, generator: torch.Generator) -> torch.Tensor:
        """Where each attacker's candidates start (alpha = 0): the benign mean, or distinct rows of ``pool``."""
        if self.p.anchor == "mean":
            return mu.expand(f, -1)
        order = torch.randperm(len(pool), generator=generator)
        return pool[order[torch.arange(f) % len(pool)].to(pool.device)]

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        if ctx.model is None or ctx.root is None:
            raise ValueError("attack 'adaptive' needs ctx.model and ctx.root (its clean data)")
        benign, mu, _ = benign_stats(updates, malicious)
        f = int(malicious.sum())
        harmful = self.base.apply(updates, malicious, ctx)[malicious]
        g0 = self.server_update(ctx)
        seeds = torch.randint(2**31 - 1, (self.p.cluster_seeds,), generator=ctx.generator).tolist()
        trials: list[tuple[float, float]] = []
        anchor = self.anchors(benign, mu, f, ctx.generator)

        def candidate(alpha: float) -> torch.Tensor:
            out = updates.clone()
            out[malicious] = anchor + alpha * (harmful - mu)
            return out

        def accepted(alpha: float) -> torch.Tensor:
            """(seeds, N) acceptance of candidate(alpha) in the attacker's simulation; logs the trial."""
            acc = self.simulate(candidate(alpha), g0, ctx, seeds)
            trials.append((alpha, float(acc[:, malicious].float().mean())))
            return acc

        if self.p.anchor == "benign":
            kept = accepted(0.0).all(0)[~malicious]
            if kept.any():
                anchor = self.anchors(benign[kept], mu, f, ctx.generator)
        best, best_score = 0.0, 0.0
        for i in range(self.p.search_steps + 1):
            alpha = self.p.max_alpha / 2**i
            accepted(alpha)
            share = trials[-1][1]
            if share >= self.p.accept_fraction and alpha * share > best_score:
                best, best_score = alpha, alpha * share
            if share == 1.0:
                break  # every attacker passes: smaller alphas cannot score higher
        self.last_alpha, self.last_trials = best, trials
        return candidate(best)
