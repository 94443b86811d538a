"""Attacks, registered by name in :data:`ATTACKS`; importing this package registers them all."""

from . import basic  # noqa: F401  (registers)
from .base import ATTACKS, Attack, register_attack

__all__ = ["ATTACKS", "Attack", "register_attack"]
