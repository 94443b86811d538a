"""An experiment's config, checked whole: its fields (:mod:`.config`) and its components (the registries).

:func:`build_config` is where a config enters (CLI, YAML, a study's cell): the
preset, file and overrides are merged and every field's type and range is
checked by :mod:`skymask_ray.config`, which imports nothing from the package;
here the dataset, model, attack and defense names are resolved and each
component checks its own parameters and assumptions (Krum's N > 2f + 2, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .attacks import ATTACKS
from .config import ExperimentConfig, assemble_config, validate_fields
from .data.datasets import DATASETS
from .defenses import DEFENSES
from .models import MODELS


def check_components(cfg: ExperimentConfig) -> ExperimentConfig:
    """Resolve every registered name and let the attack and the defense check their parameters."""
    DATASETS.get(cfg.data.dataset)
    MODELS.get(cfg.model)
    ATTACKS.get(cfg.attack).check(cfg)
    DEFENSES.get(cfg.defense).check(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fields, then components; raises a one-line ConfigError."""
    return check_components(validate_fields(cfg))


def build_config(preset: str | None = None, file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Preset, then YAML file, then overrides (nested dicts); every field and component checked."""
    return check_components(assemble_config(preset, file, overrides))
