"""Defenses (aggregators), registered by name in :data:`DEFENSES`; importing registers them all."""

from . import clustering, distance, fldetector, skymask, statistics, trust  # noqa: F401  (registers)
from .base import DEFENSES, Aggregate, Defense, DefenseSettings, build_defense, defense_settings, register_defense

__all__ = ["DEFENSES", "Aggregate", "Defense", "DefenseSettings", "build_defense", "defense_settings",
           "register_defense"]
