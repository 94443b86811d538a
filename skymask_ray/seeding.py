"""One root seed, independent child streams for every client, attack and defense."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def child_seed(seed: int, *path: object) -> int:
    """A 63-bit seed derived from the root seed and a path like ("client", round, k)."""
    key = repr((seed, *path)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def numpy_rng(seed: int, *path: object) -> np.random.Generator:
    """A numpy Generator on the child stream ``path``."""
    return np.random.default_rng(child_seed(seed, *path))


def torch_generator(seed: int, *path: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator on the child stream ``path``."""
    return torch.Generator(device=device).manual_seed(child_seed(seed, *path))
