"""Test accuracy, loss and backdoor success of the global model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .models import ParamSpec, channels_last, state_restored

if TYPE_CHECKING:
    from .attacks import Attack


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    backdoor_success: float | None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    spec: ParamSpec,
    w: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack | None = None,
    batch: int = 2000,
) -> Evaluation:
    """Accuracy and mean loss on (x, y); backdoor success on triggered non-target samples.

    Backdoor success = fraction of test samples whose true label is not the
    target that the model assigns to the target once the trigger is stamped.
    Runs the module itself at ``w`` (channels-last, ~1.8x faster on CPU than a
    functional call) and restores its own parameters and buffers afterwards.
    """
    model.eval()
    channels_last(model)
    with state_restored(model, spec) as own:
        spec.load(model, w)
        for n, b in buffers.items():
            own[n].copy_(b)
        correct, loss_sum = 0, 0.0
        for i in range(0, len(y), batch):
            out = model(x[i : i + batch])
            loss_sum += float(F.cross_entropy(out, y[i : i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
        backdoor = None
        if attack is not None and attack.has_trigger:
            keep = y != attack.target
            xs = x[keep]
            hits = 0
            for i in range(0, len(xs), batch):
                out = model(attack.stamp(xs[i : i + batch].clone()))
                hits += int((out.argmax(1) == attack.target).sum())
            backdoor = hits / max(len(xs), 1)
    return Evaluation(correct / len(y), loss_sum / len(y), backdoor)
