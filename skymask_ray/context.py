"""What an attack and what a defense may read about the current round: two frozen contexts.

The attack (omniscient, as in the paper's threat model) knows which rows are
malicious and may read the root set and the model. The defense sees only
what a server sees: the updates' client ids, the server's own update, the
*declared* f (never the realised number of attackers, which is ground truth
its TPR is scored against), a generator on a stream derived for the defense
(never the run seed, from which the attackers can be recomputed) and SkyMask's
mask selector. Client ids carry no information about who is malicious under
the default ``malicious_selection: random``. Neither side can change the
context it is given (frozen dataclasses); a defense that asks for
``malicious`` gets an AttributeError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .models import ParamSpec


@dataclass(frozen=True)
class AttackContext:
    """Round facts an attack may use. ``malicious`` marks its own rows; ``root``/``model`` where granted."""

    round: int
    global_weights: torch.Tensor
    spec: ParamSpec
    num_clients: int  # rows of the update matrix this round
    num_malicious: int  # malicious rows among them (the attackers know their own number)
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    server_update: torch.Tensor | None = None
    malicious: torch.Tensor | None = None
    model: nn.Module | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    root: tuple[torch.Tensor, torch.Tensor] | None = None
    mask_selector: Callable[..., Any] | None = None  # SkyMask as an oracle, for attacks that know the defense


@dataclass(frozen=True)
class DefenseContext:
    """Round facts a defense may use: no ground truth.

    ``server_update`` is g_0 (root-data defenses); ``mask_selector`` runs
    SkyMask's mask training and clustering where the trainer lives
    (``(updates, server_update) -> MaskSelection``); ``client_ids`` names the
    client behind each row (per-client history, e.g. FLDetector); ``declared_f``
    is the f that f-based rules assume.
    """

    round: int
    global_weights: torch.Tensor
    spec: ParamSpec
    num_clients: int
    declared_f: int
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    server_update: torch.Tensor | None = None
    mask_selector: Callable[..., Any] | None = None
    client_ids: torch.Tensor | None = None
