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


class Defense:
    """Base class. Subclasses set ``Params`` and implement :meth:`aggregate`.

    Any defense composes with a pre-aggregator (:mod:`.pre`): ``defense_params`` keys ``pre``
    (``nnm`` | ``bucketing``) and ``bucket_size`` are split off before the defense's own ``Params``
    are parsed (in ``__init__`` and in every ``check``), and the instance's ``aggregate`` then runs
    the pre-aggregator first, aggregates its M rows, and maps ``accepted``/``weights`` back to the
    N clients (``info["pre"]``, ``info["pre_rows"]``). The wrapped defense sees M rows and the same
    f: with ``bucketing`` (M = ceil(N/s) < N), defenses bounded in f clamp it to what M allows and
    record it, as they do for dropped rows; per-client ids reach it only under ``nnm``.
    """

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    needs_server_update: ClassVar[bool] = False  # root-data defenses need g_0
    rejects: ClassVar[bool] = True  # False: accepts every client by construction, so TPR/FPR say nothing (shown "-")

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig") -> None:
        params, self.pre = split_pre(params, f"defense {self.name!r}")
        self.p = parse_params(self.Params, params, f"defense {self.name!r}")
        self.cfg = cfg
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
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Validate ``cfg.defense_params`` and the defense's assumptions on N and f."""
        parse_params(cls.Params, check_pre(cfg, f"defense {cls.name!r}").defense_params, f"defense {cls.name!r}")

    def _pre_then_aggregate(self, updates: torch.Tensor, ctx: "DefenseContext") -> "Aggregate":
        """Pre-aggregate, run this defense's own ``aggregate`` on the mixed rows, map the answer back."""
        mixed, origin = pre_aggregate(self.pre, updates, ctx)
        agg = type(self).aggregate(self, mixed, inner_context(ctx, self.pre, len(mixed)))
        accepted, weights = map_back(origin, agg.accepted, agg.weights)
        info = {**agg.info, "pre": self.pre.pre, "pre_rows": len(mixed)}
        return Aggregate(agg.update, accepted, weights, info, agg.fallback)

    def aggregate(self, updates: torch.Tensor, ctx: "DefenseContext") -> Aggregate:
        raise NotImplementedError

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


def sklearn_seed(ctx: "DefenseContext", *path: object) -> int:
    """A ``random_state`` for scikit-learn, derived from the run seed and the round."""
    return child_seed(ctx.seed, "defense", ctx.round, *path) % 2**32


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
        p = parse_params(cls.Params, cfg.defense_params, f"defense {cls.name!r}")
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
        dropped = self.cfg is not None and n < self.cfg.cohort_size
        used = self.resolve_f(n, f, self.p.degrade or dropped, self.f_label(self.p))
        if used != f:
            info.update(f_assumed=f, f_used=used)
        return used
