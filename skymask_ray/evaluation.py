"""Test accuracy, loss and backdoor success of the global model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .attacks import Attack
from .models import ParamSpec


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
    """
    model.eval()
    params = spec.unflatten(w)
    state = (params, buffers)
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), batch):
        out = functional_call(model, state, (x[i : i + batch],))
        loss_sum += float(F.cross_entropy(out, y[i : i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i : i + batch]).sum())
    backdoor = None
    if attack is not None and attack.has_trigger:
        keep = y != attack.target
        xs = x[keep]
        hits = 0
        for i in range(0, len(xs), batch):
            out = functional_call(model, state, (attack.stamp(xs[i : i + batch].clone()),))
            hits += int((out.argmax(1) == attack.target).sum())
        backdoor = hits / max(len(xs), 1)
    return Evaluation(correct / len(y), loss_sum / len(y), backdoor)
