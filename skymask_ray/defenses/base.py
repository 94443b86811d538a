"""The defense (aggregator) interface and registry.

A defense turns the stacked N x P update matrix into one aggregate update and
says which clients it accepted: ``aggregate(updates, ctx) -> Aggregate``.
Stateless defenses are pure; stateful ones (FLDetector, centered clipping)
keep their state on the instance, which the round loop owns for the whole run.
Weighting defenses report ``weights``; weight 0 counts as rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import ConfigError
from ..linalg import pairwise_distances
from ..params import parse_params
from ..registry import Registry
from ..seeding import child_seed
from .pre import check_pre, inner_context, map_back, pre_aggregate, split_pre

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import DefenseContext
    from ..models import ParamSpec


@dataclass
class Aggregate:
    """A defense's answer for one round."""

    update: torch.Tensor  # (P,) the step the server applies: w <- w - global_lr * update
    accepted: torch.Tensor  # (N,) bool
    weights: torch.Tensor | None = None  # (N,) per-client weights, where the defense weights
    info: dict[str, Any] = field(default_factory=dict)
    fallback: bool = False  # a documented fallback replaced the normal rule this round


@dataclass
class NoParams:
    """A defense without parameters."""


@dataclass(frozen=True)
class DefenseSettings:
    """All a defense object holds from the experiment: what a server knows before round 1.

    Built once per run by :func:`defense_settings`. Never the ``ExperimentConfig``: that holds the
    malicious fraction, the attacker selection and the run seed, from which
    :func:`~skymask_ray.population.malicious_population` recomputes who the attackers are (the
    ground truth a defense's TPR is scored against). ``seed`` is the defense's own stream, a
    one-way hash of the run seed: a defense cannot read the run seed back, though one that
    searched candidate seeds through :func:`~skymask_ray.seeding.child_seed` could still find a
    small one; the seal is against reading the truth, not against a deliberate search.
    """

    params: dict[str, Any]  # defense_params as given (pre-aggregation keys included)
    declared_f: int  # the f that f-based rules assume (declared, never the realised count)
    cohort_size: int  # K: clients sampled per round (fewer rows reach the rule when some drop out or are invalid)
    spec: "ParamSpec | None" = None  # the model's parameter layout
    seed: int = 0  # root of the defense's own random streams (child_seed(run seed, "defense", "settings"))
    fallback: str = "server"  # skymask: what to apply when no client shares the server's cluster (skymask.fallback)


def defense_settings(cfg: "ExperimentConfig", spec: "ParamSpec | None" = None) -> DefenseSettings:
    """The narrow, frozen settings of ``cfg``'s defense (see :class:`DefenseSettings`)."""
    return DefenseSettings(params=dict(cfg.defense_params or {}), declared_f=cfg.num_declared_f,
                           cohort_size=cfg.cohort_size, spec=spec, seed=child_seed(cfg.seed, "defense", "settings"),
                           fallback=cfg.skymask.fallback)


class Defense:
    """Base class. Subclasses set ``Params`` and implement :meth:`aggregate`.

    Any defense composes with a pre-aggregator (:mod:`.pre`): ``defense_params`` keys ``pre``
    (``nnm`` | ``bucketing``) and ``bucket_size`` are split off before the defense's own ``Params``
    are parsed (in ``__init__`` and in every ``check``), and the instance's ``aggregate`` then runs
    the pre-aggregator first, aggregates its M rows, and maps ``accepted``/``weights`` back to the
    N clients (``info["pre"]``, ``info["pre_rows"]``): a client is accepted iff its update is mixed
    into an accepted row, under either pre-aggregator (:mod:`.pre`). The wrapped defense sees M rows and the same
    f: with ``bucketing`` (M = ceil(N/s) < N), defenses bounded in f clamp it to what M allows and
    record it, as they do for dropped rows; per-client ids reach it only under ``nnm``.
    """

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    needs_server_update: ClassVar[bool] = False  # root-data defenses need g_0
    rejects: ClassVar[bool] = True  # False: accepts every client by construction, so TPR/FPR say nothing (shown "-")

    def __init__(self, settings: DefenseSettings) -> None:
        params, self.pre = split_pre(settings.params, f"defense {self.name!r}")
        self.p = self.parse(params)
        self.settings = settings
        if self.pre is not None:
            self.aggregate = self._pre_then_aggregate  # type: ignore[method-assign]  (this instance only)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``check`` sees ``defense_params`` without the pre-aggregation keys."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("check")
        if isinstance(own, classmethod):
            inner = own.__func__

            def check(klass: type, cfg: "ExperimentConfig") -> None:
                inner(klass, check_pre(cfg, f"defense {klass.name!r}"))

            check.__doc__ = inner.__doc__
            cls.check = classmethod(check)  # type: ignore[assignment]

    @classmethod
    def parse(cls, params: dict[str, Any] | None) -> Any:
        """``params`` (pre-aggregation keys already split off) as this defense's ``Params`` (raises
        ConfigError): the one path of building and checking them."""
        return parse_params(cls.Params, params, f"defense {cls.name!r}")

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Validate ``cfg.defense_params`` and the defense's assumptions on N and f."""
        cls.parse(check_pre(cfg, f"defense {cls.name!r}").defense_params)

    def _pre_then_aggregate(self, updates: torch.Tensor, ctx: "DefenseContext") -> "Aggregate":
        """Pre-aggregate, run this defense's own ``aggregate`` on the mixed rows, map the answer back."""
        mixed, mix = pre_aggregate(self.pre, updates, ctx, self.settings.seed)
        agg = type(self).aggregate(self, mixed, inner_context(ctx, self.pre, len(mixed)))
        accepted, weights = map_back(mix, agg.accepted, agg.weights)
        info = {**agg.info, "pre": self.pre.pre, "pre_rows": len(mixed)}
        return Aggregate(agg.update, accepted, weights, info, agg.fallback)

    def aggregate(self, updates: torch.Tensor, ctx: "DefenseContext") -> Aggregate:
        raise NotImplementedError

    def random_state(self, ctx: "DefenseContext", *path: object) -> int:
        """A ``random_state`` for scikit-learn from the defense's own stream, the round and ``path``."""
        return child_seed(self.settings.seed, ctx.round, *path) % 2**32

    def min_rows(self) -> int:
        """The fewest updates this rule can aggregate; a round with fewer applies no update."""
        return 1

    def state_dict(self) -> dict[str, Any]:
        """State carried across rounds (for checkpoints); stateless defenses have none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


DEFENSES: Registry[type[Defense]] = Registry("defense")


register_defense = DEFENSES.register_class


def can_reject(name: str) -> bool:
    """Can defense ``name`` reject a client at all? (FedAvg cannot: its TPR/FPR are shown as ``-``, not 0.)"""
    return name not in DEFENSES or DEFENSES.get(name).rejects


def mean_of(updates: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """Plain mean of the accepted rows (zeros if none), as one matrix-vector product (no copy of the rows)."""
    count = int(accepted.sum())
    if count == 0:
        return torch.zeros_like(updates[0])
    return (accepted.to(updates.dtype) / count) @ updates


def all_accepted(updates: torch.Tensor) -> torch.Tensor:
    """An (N,) all-True mask on the updates' device."""
    return torch.ones(len(updates), dtype=torch.bool, device=updates.device)


def build_defense(cfg: "ExperimentConfig", spec: "ParamSpec | None" = None) -> Defense:
    """``cfg``'s defense, holding only its :class:`DefenseSettings`."""
    return DEFENSES.get(cfg.defense)(defense_settings(cfg, spec))


def distances_to(updates: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distances from every row to ``point``, through the shared helper."""
    return pairwise_distances(updates, point.reshape(1, -1))[:, 0]


@dataclass
class DegradeParams:
    """Parameters shared by defenses with a bound on f (see :class:`BoundedDefense`)."""

    degrade: bool = False  # clamp f to the largest value the assumption allows instead of failing


class BoundedDefense(Defense):
    """A defense that tolerates at most ``max_f(N)`` Byzantine clients.

    ``assumption`` states the condition (e.g. ``N >= 4f + 3``). :meth:`check`
    rejects a config that breaks it with one :class:`ConfigError`, unless the
    user sets ``degrade: true``; then f is clamped to ``max_f(N)`` and the round's
    ``info`` records ``f_assumed`` and ``f_used``. At aggregation time f is clamped
    the same way when fewer rows reach it than the cohort (invalid updates, dropouts).
    """

    Params: ClassVar[type] = DegradeParams
    assumption: ClassVar[str] = ""

    @staticmethod
    def max_f(n: int) -> int:
        """The largest f the rule tolerates with N = n clients (-1: none)."""
        raise NotImplementedError

    @classmethod
    def f_of(cls, p: Any, f: int) -> int:
        """The count the assumption is about (f itself unless a parameter overrides it)."""
        return f

    @classmethod
    def f_label(cls, p: Any) -> str:
        """What :meth:`f_of` returns, as error messages name it."""
        return "f"

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        p = cls.parse(cfg.defense_params)
        cls.resolve_f(cfg.cohort_size, cls.f_of(p, cfg.num_declared_f), p.degrade, cls.f_label(p))

    @classmethod
    def resolve_f(cls, n: int, f: int, degrade: bool, label: str = "f") -> int:
        """f if the assumption holds for N = n, the clamped f if ``degrade``; else a ConfigError."""
        fmax = cls.max_f(n)
        if f <= fmax:
            return f
        if fmax < 0:
            raise ConfigError(f"defense {cls.name!r} assumes {cls.assumption}, which no f satisfies with N={n} clients")
        if degrade:
            return fmax
        raise ConfigError(
            f"defense {cls.name!r} assumes {cls.assumption}, but N={n} and {label}={f} (at most {label}={fmax} "
            f"for N={n}); lower {'malicious_fraction' if label == 'f' else label}, add clients, or set "
            f"defense_params degrade: true to clamp {label} to {fmax}"
        )

    def min_rows(self) -> int:
        """The fewest updates the rule can aggregate at all (some f >= 0 satisfies the assumption)."""
        n = 1
        while self.max_f(n) < 0 and n < 64:
            n += 1
        return n

    def effective_f(self, n: int, f: int, info: dict[str, Any]) -> int:
        """Resolve f for this round's N = n rows and record a clamp in ``info``."""
        f = self.f_of(self.p, f)
        dropped = n < self.settings.cohort_size
        used = self.resolve_f(n, f, self.p.degrade or dropped, self.f_label(self.p))
        if used != f:
            info.update(f_assumed=f, f_used=used)
        return used
