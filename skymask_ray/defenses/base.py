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

from ..params import parse_params
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import RoundContext


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
    """Base class. Subclasses set ``Params`` and implement :meth:`aggregate`."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    needs_server_update: ClassVar[bool] = False  # root-data defenses need g_0

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig") -> None:
        self.p = parse_params(self.Params, params, f"defense {self.name!r}")
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Validate ``cfg.defense_params`` and the defense's assumptions on N and f."""
        parse_params(cls.Params, cfg.defense_params, f"defense {cls.name!r}")

    def aggregate(self, updates: torch.Tensor, ctx: "RoundContext") -> Aggregate:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State carried across rounds (for checkpoints); stateless defenses have none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(name: str):
    """Class decorator: set ``cls.name`` and register it in :data:`DEFENSES`."""

    def deco(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        return DEFENSES.register(name)(cls)

    return deco


def mean_of(updates: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """Plain mean of the accepted rows (zeros if none)."""
    if not accepted.any():
        return torch.zeros_like(updates[0])
    return updates[accepted].mean(dim=0)
