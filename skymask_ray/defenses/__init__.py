"""Defenses (aggregators), registered by name in :data:`DEFENSES`; importing registers them all."""

from . import skymask, trust  # noqa: F401  (registers)
from .base import DEFENSES, Aggregate, Defense, register_defense

__all__ = ["DEFENSES", "Aggregate", "Defense", "register_defense"]
