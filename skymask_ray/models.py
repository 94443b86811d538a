"""Model architectures and :class:`ParamSpec`, the map between a module and a flat vector.

Every registered model is a plain ``torch.nn.Module`` built by a factory
``(input_shape, num_classes) -> Module`` that returns class logits; the loss
applies log-softmax over the class dimension (``F.cross_entropy``). Nothing
downstream (clients, defenses, SkyMask) knows the architecture: it only sees
the flat parameter vector of length P and ``ParamSpec``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a module's trainable parameters in one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def of(cls, module: nn.Module) -> "ParamSpec":
        names, shapes, offsets, off = [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(off)
            off += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), off)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters as one detached float32 vector (a copy)."""
        return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (last dim P); works under vmap and autograd."""
        return {
            n: flat[..., o : o + s.numel()].reshape(*flat.shape[:-1], *s)
            for n, s, o in zip(self.names, self.shapes, self.offsets)
        }

    def slices(self) -> dict[str, slice]:
        """Coordinate range of each named parameter in the flat vector."""
        return {n: slice(o, o + s.numel()) for n, s, o in zip(self.names, self.shapes, self.offsets)}

    def load(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy ``flat`` into the module's parameters in place."""
        with torch.no_grad():
            for p, v in zip(module.parameters(), self.unflatten(flat).values()):
                p.copy_(v)


def channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D (conv) weights channels-last, in place: oneDNN's CPU convolutions run ~1.5x faster so."""
    if any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


@contextmanager
def state_restored(model: nn.Module, spec: ParamSpec) -> Iterator[dict[str, torch.Tensor]]:
    """Run code that loads other weights into ``model``; its parameters and buffers are put back after.

    Yields the module's own buffers by name (the live tensors, to copy statistics into).
    """
    saved = spec.flatten(model)
    own = dict(model.named_buffers())
    saved_buffers = {n: b.detach().clone() for n, b in own.items()}
    try:
        yield own
    finally:
        spec.load(model, saved)
        with torch.no_grad():
            for n, b in own.items():
                b.copy_(saved_buffers[n])


def buffers_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the module's buffers (BatchNorm statistics)."""
    return {n: b.detach().clone() for n, b in module.named_buffers()}


class CNN(nn.Module):
    """The paper's Fashion-MNIST model: conv3x3(30)-pool-conv3x3(50)-pool-fc(100)-fc(C)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 30, 3)
        self.conv2 = nn.Conv2d(30, 50, 3)
        h, w = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
        if h < 1 or w < 1:
            raise ValueError(f"cnn needs inputs of at least 10x10, got {input_shape}")
        self.fc1 = nn.Linear(50 * h * w, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(.)) == max_pool(relu(.)) (both monotone) at a quarter of the relu work
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """Two hidden layers of 200 units."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        d = int(torch.Size(input_shape).numel())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LogisticRegression(nn.Module):
    """Multinomial logistic regression (the paper's HAR model)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(int(torch.Size(input_shape).numel()), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block with option-A (zero-padded identity) shortcut, as in He et al. for CIFAR."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (3 stages x 3 blocks, 16/32/64 channels) with BatchNorm."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS.add("cnn", CNN)
MODELS.add("mlp", MLP)
MODELS.add("lr", LogisticRegression)
MODELS.add("resnet20", ResNet20)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """Instantiate a registered model with deterministic initial weights."""
    factory = MODELS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(tuple(input_shape), num_classes)
