"""Attacks, registered by name in :data:`ATTACKS`; importing this package registers them all.

Modules by family: :mod:`.data_poisoning` (none, label_flip, scaling,
lie_backdoor), :mod:`.model_poisoning` (lie, min_max, min_sum, fang_trim,
fang_krum, sign_flip, ipm, gaussian), :mod:`.finegrained` (layer, parameter)
and :mod:`.adaptive` (adaptive); :mod:`.recent` (poisonedfl, dba, neurotoxin, skymask_adaptive).
"""

from . import adaptive, data_poisoning, finegrained, model_poisoning, recent  # noqa: F401  (registers)
from .base import ATTACKS, Attack, benign_stats, register_attack

__all__ = ["ATTACKS", "Attack", "benign_stats", "register_attack"]
