"""Attacks, registered by name in :data:`ATTACKS`; importing this package registers them all.

Modules by family: :mod:`.data_poisoning` (none, label_flip),
:mod:`.backdoor` (scaling, lie_backdoor, dba, neurotoxin),
:mod:`.model_poisoning` (lie, min_max, min_sum, fang_trim, fang_krum,
sign_flip, ipm, gaussian, poisonedfl), :mod:`.finegrained` (layer,
parameter) and :mod:`.adaptive` (adaptive, skymask_adaptive: attacks aimed
at SkyMask).
"""

from . import adaptive, backdoor, data_poisoning, finegrained, model_poisoning  # noqa: F401  (registers)
from .base import ATTACKS, Attack, benign_stats, register_attack

__all__ = ["ATTACKS", "Attack", "benign_stats", "register_attack"]
