r"""Data-poisoning attacks that change labels only: malicious clients train on relabelled data (``trains = True``).

``none`` is the control (attackers behave honestly); ``label_flip`` relabels
every sample. The backdoors, which also stamp a trigger, are in
:mod:`.backdoor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..errors import ConfigError
from .base import Attack, register_attack

if TYPE_CHECKING:
    from ..config import ExperimentConfig


@register_attack("none")
class NoAttack(Attack):
    """No attack: malicious clients behave honestly (a control)."""


@dataclass
class LabelFlipParams:
    # reverse (y -> C-1-y) | shift (y -> y+shift mod C) | {from: to, ...}
    mapping: Literal["reverse", "shift"] | dict[Any, Any] = "reverse"
    shift: int = 1

    def validate(self) -> None:
        """Not a bound: a mapping given as a dict must be non-empty and map class indices >= 0 to such."""
        if isinstance(self.mapping, dict):
            try:
                pairs = [(int(k), int(v)) for k, v in self.mapping.items()]
            except (TypeError, ValueError):
                raise ValueError(f"mapping must map class indices to class indices, got {self.mapping!r}") from None
            if not pairs or any(a < 0 or b < 0 for a, b in pairs):
                raise ValueError(f"mapping must be a non-empty dict of class indices >= 0, got {self.mapping!r}")


@register_attack("label_flip")
class LabelFlip(Attack):
    r"""Label flipping: malicious clients train on relabelled data.

    ``mapping: reverse`` (default) :math:`y \to C - 1 - y`; ``shift``
    :math:`y \to (y + \text{shift}) \bmod C`; a dict maps the listed classes
    and leaves the others unchanged (a targeted flip such as ``{7: 1}``).

    Reference: Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", USENIX Security 2020 (label flipping baseline).
    """

    Params = LabelFlipParams

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        super().__init__(params, cfg, num_classes)
        c = num_classes
        table = torch.arange(c)
        if self.p.mapping == "reverse":
            table = (c - 1) - table
        elif self.p.mapping == "shift":
            table = (table + self.p.shift) % c
        else:
            for a, b in ((int(k), int(v)) for k, v in self.p.mapping.items()):
                if a >= c or b >= c:
                    raise ConfigError(f"attack 'label_flip': mapping {a} -> {b} is outside the {c} classes")
                table[a] = b
        self.table = table

    def poison_data(self, x, y, generator, client=0):
        return x, self.table.to(y.device)[y]
