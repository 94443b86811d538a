"""What an attack or a defense may read about the current round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .models import ParamSpec


@dataclass
class RoundContext:
    """Round-level facts shared by attacks and defenses.

    ``server_update`` is g_0, the server's own update on the root dataset, for
    root-data defenses (fltrust, skymask). ``mask_selector`` runs SkyMask's mask
    training and clustering where the trainer lives (a Ray actor, maybe on a
    GPU): ``(updates, server_update, seed) -> MaskSelection``. ``client_ids``
    names the clients behind the rows when the loop dropped invalid ones, so
    defenses with per-client history (fldetector) follow the right client.
    """

    round: int
    global_weights: torch.Tensor
    spec: ParamSpec
    num_clients: int
    num_malicious: int
    generator: torch.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    server_update: torch.Tensor | None = None
    malicious: torch.Tensor | None = None
    model: nn.Module | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    root: tuple[torch.Tensor, torch.Tensor] | None = None
    mask_selector: Callable[..., Any] | None = None
    client_ids: torch.Tensor | None = None  # global client id of each row the defense sees (None: 0..n-1)
