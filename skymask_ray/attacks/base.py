"""The attack interface and registry.

An attack is a small class registered under a name. Its typed parameters come
from ``attack_params`` (a dataclass ``Params``). Two hooks, both optional:

* data poisoning: :meth:`Attack.poison_data` transforms each malicious
  client's dataset once, at setup (``client`` is its global id, for attacks
  that treat attackers differently, such as DBA); those clients then train
  normally (``trains = True``).
* model poisoning: :meth:`Attack.apply` replaces the malicious rows of the
  N x P update matrix in place of the honest ones (``trains = False``: the
  simulation skips their local training). Statistics come from benign rows
  only; the defense always sees N updates.

Fine-grained wrappers (:mod:`.finegrained`) run any composable attack on a
subset of the coordinates; ``layer`` (it reads the model's ParamSpec) and the
adaptive attack (it needs whole model vectors) are not composable.

Attacks with state across rounds (PoisonedFL) implement :meth:`Attack.state_dict`
and :meth:`Attack.load_state_dict` (tensors and plain types only). State that follows
the global model advances in :meth:`Attack.begin_round`, which the round loop calls
every round, whether or not the cohort holds an attacker (``apply`` runs only when it
does); :func:`round_start` gives what it records (last round's aggregate, this round's
weights).

Attackers that train with their own learning rate or epochs (DBA, Neurotoxin: their
reference code's poison lr and epochs) say so in :meth:`Attack.poison_sgd`; the client
workers train those clients with the honest settings overridden by it.

Attacks with a trigger (backdoors) implement :meth:`Attack.stamp` and set
``target``, so the simulation measures backdoor success on triggered test
samples whose true label is not the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..params import parse_params
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import AttackContext


@dataclass
class NoParams:
    """An attack without parameters."""


class Attack:
    """Base class: identity on data and updates."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    trains: ClassVar[bool] = True  # do malicious clients run local SGD? (wrappers set it per instance)
    target: int | None = None  # backdoor target class, if any
    needs_server_update: ClassVar[bool] = False  # ask the round loop for g_0 even if the defense does not
    composable: ClassVar[bool] = True  # may run on a coordinate subset inside a fine-grained wrapper

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        self.p = self.parse(params)
        self.cfg = cfg
        self.num_classes = num_classes

    @classmethod
    def parse(cls, params: dict[str, Any] | None) -> Any:
        """``params`` as this attack's ``Params`` (raises ConfigError): the one path of building and checking."""
        return parse_params(cls.Params, params, f"attack {cls.name!r}")

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Validate ``cfg.attack_params`` for this attack (raises ConfigError)."""
        cls.parse(cfg.attack_params)

    @classmethod
    def trains_with(cls, params: dict[str, Any] | None) -> bool:
        """Would an instance built with ``params`` run local SGD? (Wrappers decide from their base.)"""
        return cls.trains

    @property
    def has_trigger(self) -> bool:
        return self.target is not None

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, client: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data poisoning of one malicious client's dataset (default: none); ``client`` is its global id."""
        return x, y

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        """Model poisoning: return updates with malicious rows replaced (default: unchanged)."""
        return updates

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the backdoor trigger to a batch (attacks with a trigger only)."""
        raise NotImplementedError(f"attack {self.name!r} has no trigger")

    def begin_round(self, round_idx: int, global_weights: torch.Tensor) -> None:
        """Every round, before the clients train, with the global weights they start from (default: nothing)."""

    def poison_sgd(self) -> dict[str, Any]:
        """Overrides of the local SGD settings (``lr``, ``epochs``, ``steps``) for the malicious clients that
        train (default none: they train like the honest clients)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State carried across rounds, for checkpoints: tensors and plain types only (loadable with
        ``torch.load(weights_only=True)``); stateless attacks have none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


ATTACKS: Registry[type[Attack]] = Registry("attack")


register_attack = ATTACKS.register_class


def benign_stats(updates: torch.Tensor, malicious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(benign rows, their mean, their per-coordinate std) — the omniscient attacker's view."""
    benign = updates[~malicious]
    if len(benign) == 0:
        raise ValueError("model-poisoning attacks need at least one benign update to read")
    std = benign.std(dim=0, unbiased=True) if len(benign) > 1 else torch.zeros_like(benign[0])
    return benign, benign.mean(dim=0), std


def previous_aggregate(prev_weights: torch.Tensor | None, weights: torch.Tensor, global_lr: float,
                       like: torch.Tensor) -> torch.Tensor | None:
    r"""The aggregate the server applied last round, :math:`(w_{t-1} - w_t)/\eta` (None in the first round)."""
    if prev_weights is None:
        return None
    w = weights.to(like.device, like.dtype)
    return (prev_weights.to(like.device, like.dtype) - w) / global_lr


def round_start(prev_weights: torch.Tensor | None, weights: torch.Tensor, global_lr: float
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """What :meth:`Attack.begin_round` records: (last round's aggregate or None, this round's weights),
    both on the CPU."""
    w = weights.detach().cpu()
    return previous_aggregate(prev_weights, w, global_lr, w), w.clone()
