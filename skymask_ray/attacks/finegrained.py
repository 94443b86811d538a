r"""Fine-grained attacks, the SkyMask paper's motivation: any attack, on part of the model only.

``layer`` and ``parameter`` wrap a registered base attack (``base``,
``base_params``); they are not copies of it. Each round the wrapper picks a
coordinate set :math:`J` and runs the base attack on the N x |J| sub-matrix
``updates[:, J]``, as if those coordinates were the whole model: the base
attack's statistics and constraints (min_max's distance bound, Krum's
scores, ...) are computed on :math:`J` alone. Malicious row k then is

.. math:: g_{kj} = \begin{cases} \tilde g_{kj} & j \in J \text{ (base attack)}\\
          r_{kj} & j \notin J \end{cases}

where the rest :math:`r_k` is chosen by ``rest``:

* ``own``: the client's own honestly trained update (the wrapper sets
  ``trains = True`` so malicious clients run local SGD on clean data);
* ``mean``: the benign mean :math:`\mu` (no training needed for
  model-poisoning bases; the only choice when the base poisons data, since
  the client's own update then is poisoned everywhere);
* ``auto`` (default): ``mean`` for bases that poison data (label_flip,
  scaling, lie_backdoor), ``own`` otherwise.

Data poisoning, the trigger and the target are the base attack's. Wrappers
nest (``layer`` over ``parameter``: a fraction of the last layer); ``layer``
itself (it reads the whole model's ``ParamSpec``) and the adaptive attack
(it needs whole model vectors) cannot be wrapped. The base attack sees a context whose
``global_weights`` and ``server_update`` are restricted to :math:`J` (its
``spec`` is still the whole model's).

Reference: Yan et al., "SkyMask: Attack-agnostic Robust Federated Learning
with Fine-grained Learnable Masks", ECCV 2024 (layer- and parameter-level
attacks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..errors import ConfigError
from ..params import bounded
from ..seeding import torch_generator
from .base import ATTACKS, Attack, register_attack

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import AttackContext
    from ..models import ParamSpec


@dataclass
class FineGrainedParams:
    base: str = "min_max"
    base_params: dict[str, Any] = field(default_factory=dict)
    rest: Literal["auto", "own", "mean"] = "auto"


def _poisons_data(cls: type[Attack], params: dict[str, Any] | None) -> bool:
    """Does ``cls`` transform the malicious clients' data (so their trained updates are not honest)?"""
    if issubclass(cls, FineGrained):
        p = cls.parse(params)
        return _poisons_data(ATTACKS.get(p.base), p.base_params)
    return cls.poison_data is not Attack.poison_data


class FineGrained(Attack):
    """Run a base attack on a coordinate subset (:meth:`coordinates`); the rest stays benign."""

    Params = FineGrainedParams
    trains = False  # per instance: see __init__
    last_coordinates: torch.Tensor | None = None  # diagnostics: J of the latest round

    @classmethod
    def resolve(cls, p: FineGrainedParams) -> tuple[type[Attack], str]:
        """The base attack's class and the effective ``rest``; ConfigError where they conflict."""
        owner = f"attack {cls.name!r}"
        base_cls = ATTACKS.get(p.base)
        if not base_cls.composable:
            raise ConfigError(f"{owner}: base attack {p.base!r} needs the whole model and cannot be restricted")
        poisoned = _poisons_data(base_cls, p.base_params)
        rest = p.rest if p.rest != "auto" else ("mean" if poisoned else "own")
        if rest == "own" and poisoned:
            raise ConfigError(
                f"{owner}: rest 'own' needs the clients' honest updates, but {p.base!r} trains on "
                "poisoned data; use rest 'mean'"
            )
        return base_cls, rest

    @classmethod
    def trains_with(cls, params: dict[str, Any] | None) -> bool:
        p = cls.parse(params)
        base_cls, rest = cls.resolve(p)
        return rest == "own" or base_cls.trains_with(p.base_params)

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        p = cls.parse(cfg.attack_params)
        base_cls, _ = cls.resolve(p)
        base_cls.check(dataclasses.replace(cfg, attack=p.base, attack_params=p.base_params))

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        super().__init__(params, cfg, num_classes)
        base_cls, self.rest = self.resolve(self.p)
        base_cfg = dataclasses.replace(cfg, attack=self.p.base, attack_params=self.p.base_params)
        self.base = base_cls(self.p.base_params, base_cfg, num_classes)
        self.trains = self.base.trains or self.rest == "own"
        self.target = self.base.target

    def poison_data(self, x, y, generator, client=0):
        return self.base.poison_data(x, y, generator, client=client)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.stamp(x)

    def begin_round(self, round_idx: int, global_weights: torch.Tensor) -> None:
        self.base.begin_round(round_idx, global_weights)

    def poison_sgd(self) -> dict[str, Any]:
        return self.base.poison_sgd()

    def coordinates(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        """Sorted indices J of the coordinates the base attack may change this round."""
        raise NotImplementedError

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        idx = self.coordinates(updates, malicious, ctx)
        self.last_coordinates = idx
        sub_ctx = dataclasses.replace(
            ctx,
            global_weights=ctx.global_weights[idx.to(ctx.global_weights.device)],
            server_update=None if ctx.server_update is None else ctx.server_update[idx.to(ctx.server_update.device)],
        )
        poisoned = self.base.apply(updates[:, idx], malicious, sub_ctx)[malicious]
        if self.rest == "own":
            rows = updates[malicious].clone()
        else:
            rows = updates[~malicious].mean(0).expand(int(malicious.sum()), -1).clone()
        rows[:, idx] = poisoned
        out = updates.clone()
        out[malicious] = rows
        return out


@dataclass
class LayerParams(FineGrainedParams):
    layers: str | list[str] = "last"  # parameter-name prefixes (e.g. fc2, layers.8), or "last"

    def validate(self) -> None:
        """Not a bound: layers (a string or a list of strings, by type) names at least one non-empty prefix."""
        items = [self.layers] if isinstance(self.layers, str) else self.layers
        if not items or not all(items):
            raise ValueError(f"layers must be 'last' or a non-empty list of name prefixes, got {self.layers!r}")


@register_attack("layer")
class Layer(FineGrained):
    r"""Layer-level attack: the base attack on the chosen layers only.

    ``layers`` holds parameter-name prefixes matched at a dot boundary
    (``fc2`` selects ``fc2.weight`` and ``fc2.bias``, not ``fc20.*``; a full
    name selects one tensor) or ``"last"``: every parameter of the module that
    owns the model's last parameter (``fc2`` of cnn, ``fc`` of lr and
    resnet20). Malicious coordinates outside them follow ``rest`` (module
    docstring).
    """

    Params = LayerParams
    composable = False  # its coordinates come from the whole model's ParamSpec

    def layer_names(self, spec: "ParamSpec") -> list[str]:
        """The selected parameter names, in model order."""
        wanted = [self.p.layers] if isinstance(self.p.layers, str) else list(self.p.layers)
        chosen: set[str] = set()
        for w in wanted:
            if w == "last":
                w = spec.names[-1].rsplit(".", 1)[0]
            hits = {n for n in spec.names if n == w or n.startswith(w + ".")}
            if not hits:
                raise ConfigError(f"attack 'layer': no parameter matches {w!r}; parameters: {', '.join(spec.names)}")
            chosen |= hits
        return [n for n in spec.names if n in chosen]

    def coordinates(self, updates, malicious, ctx):
        slices = ctx.spec.slices()
        parts = [torch.arange(slices[n].start, slices[n].stop) for n in self.layer_names(ctx.spec)]
        return torch.cat(parts).to(updates.device)


@dataclass
class ParameterParams(FineGrainedParams):
    fraction: float = bounded(0.1, gt=0, le=1)  # share of the P coordinates that are poisoned
    selection: Literal["random", "magnitude"] = "random"
    resample: bool = False  # random: draw a new subset every round instead of keeping the first


@register_attack("parameter")
class Parameter(FineGrained):
    r"""Parameter-level attack: the base attack on a subset J of the coordinates.

    :math:`|J| = k = \max(1, \mathrm{round}(\text{fraction}\cdot P))`.

    ``selection: random`` draws J uniformly once per run, from a stream
    derived from the run's seed (``ctx.seed``) so that a resumed run keeps
    the same J (a persistent target), or every round from ``ctx.generator``
    with ``resample: true``. ``selection: magnitude`` takes, every round, the k
    coordinates with the largest benign mean :math:`|\mu_j|`, the ones
    benign training moves most. Malicious coordinates outside J follow
    ``rest`` (module docstring).
    """

    Params = ParameterParams
    _fixed: torch.Tensor | None = None

    def coordinates(self, updates, malicious, ctx):
        p = updates.shape[1]
        k = max(1, round(self.p.fraction * p))
        if self.p.selection == "magnitude":
            mu = updates[~malicious].mean(0)
            return mu.abs().topk(k).indices.sort().values
        if self.p.resample:
            return torch.randperm(p, generator=ctx.generator)[:k].sort().values.to(updates.device)
        if self._fixed is None or len(self._fixed) != k:
            gen = torch_generator(ctx.seed, "attack", "parameter-coordinates")
            self._fixed = torch.randperm(p, generator=gen)[:k].sort().values
        return self._fixed.to(updates.device)
