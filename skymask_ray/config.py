"""Typed experiment configuration: dataclasses, presets, YAML I/O and validation.

Configs are validated once, where they enter (CLI or YAML); everything past
:func:`validate` may trust them. Every bad value raises a one-line
:class:`ConfigError` naming the field and the allowed range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Which dataset, where to find it and how to split it over clients."""

    dataset: str = "fmnist"
    data_dir: str | None = None
    partition: str = "bias"  # bias | dirichlet | iid
    bias: float = 0.5
    alpha: float = 0.5
    root_size: int = 100
    root_p: float = 0.1
    samples_per_client: int | None = None  # cap per client (None: all of its share)
    synthetic_train: int = 6000  # sizes of the `synthetic` dataset
    synthetic_test: int = 1000
    synthetic_shape: tuple[int, ...] = (1, 28, 28)
    synthetic_classes: int = 10


@dataclass
class TrainConfig:
    """Local SGD of the clients and of the server's own model on the root data."""

    local_epochs: int = 1
    local_steps: int | None = None  # fixed steps instead of epochs
    batch_size: int = 32
    local_lr: float = 0.5
    global_lr: float = 0.5
    grad_clip: float | None = 0.01  # element-wise gradient clamp (paper's code)
    server_budget: str = "matched"  # matched (median client steps) | epoch (one pass over root)
    client_exec: str = "auto"  # auto | sequential | vmap
    vmap_chunk: int = 32  # clients per vmap call


@dataclass
class SkyMaskConfig:
    """SkyMask mask training and selection (SPEC section 5); every number is a knob."""

    mask_init: float = 1.0
    mask_epochs: int = 20
    optimizer: str = "sgd"  # sgd (the paper's code) | adam
    mask_lr: float | None = None  # None: 1e7 (1e8 for resnet20) for sgd, 0.1 for adam
    mask_grad_clip: float | None = 1e-7
    mask_batch_size: int | None = None  # None: whole root set per step
    early_stop_step: int = 10
    early_stop_delta: float = 1e-2
    threshold: float = 0.5
    fallback: str = "server"  # what to apply when no client is in the server's cluster: server | fedavg
    shards: int | None = None  # parameter shards over trainer actors (None: auto from memory)
    shard_memory_gb: float = 8.0  # budget one trainer shard may use for the N x P state
    kernel: str = "auto"  # mask step: compiled (torch.compile, one fused pass) | eager | auto (compiled if it works)
    select: str = "gmm2"  # clustering rule: gmm2 (the paper: always 2 components) | bic (1 or 2 components by BIC)


@dataclass
class ExperimentConfig:
    """One federated run: data, model, population, threat, defense and execution."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "cnn"
    clients: int = 100
    malicious_fraction: float = 0.2
    malicious_selection: str = "first"  # first (after the seeded permutation) | random
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense: str = "skymask"
    defense_params: dict[str, Any] = field(default_factory=dict)
    rounds: int = 30
    seed: int = 0
    eval_every: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)
    skymask: SkyMaskConfig = field(default_factory=SkyMaskConfig)
    device: str = "auto"  # auto | cpu | cuda
    address: str | None = None  # Ray cluster address (None: local, or $RAY_ADDRESS)
    workers: int | None = None  # client-pool actors (None: one per CPU core of the cluster)
    out: str | None = None

    @property
    def num_malicious(self) -> int:
        """f = round(N * malicious_fraction)."""
        return int(round(self.clients * self.malicious_fraction))


_PAPER_TRAIN = {"local_epochs": 1, "batch_size": 32, "local_lr": 0.5, "global_lr": 0.5, "grad_clip": 0.01}

PRESETS: dict[str, dict[str, Any]] = {
    "paper-fmnist": {
        "data": {"dataset": "fmnist", "partition": "bias", "bias": 0.5, "root_size": 100},
        "model": "cnn",
        "clients": 100,
        "malicious_fraction": 0.2,
        "train": _PAPER_TRAIN,
    },
    "paper-cifar10": {
        "data": {"dataset": "cifar10", "partition": "bias", "bias": 0.5, "root_size": 100},
        "model": "resnet20",
        "clients": 100,
        "malicious_fraction": 0.2,
        "train": {**_PAPER_TRAIN, "batch_size": 64},
    },
    "paper-har": {
        "data": {"dataset": "har", "partition": "subject", "root_size": 100},
        "model": "lr",
        "clients": 30,
        "malicious_fraction": 0.2,
        "train": _PAPER_TRAIN,
    },
}

_SECTIONS = {"data": DataConfig, "train": TrainConfig, "skymask": SkyMaskConfig}


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set dataclass fields of ``obj`` from ``values``; unknown keys are errors."""
    names = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in names:
            raise ConfigError(f"unknown config key {where}{key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}{key!r} must be a mapping")
            _merge_into(current, value, f"{where}{key}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            setattr(obj, key, tuple(value))
        else:
            setattr(obj, key, value)


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at a dotted key ("train.local_lr") of a nested override dict; None means not given."""
    if value is None:
        return
    *heads, last = dotted.split(".")
    for h in heads:
        d = d.setdefault(h, {})
    d[last] = value


def build_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Preset, then YAML file, then overrides (nested dicts), then validation."""
    cfg = ExperimentConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        _merge_into(cfg, PRESETS[preset], "")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping")
        file_preset = loaded.pop("preset", None)
        if file_preset is not None:
            base = build_config(preset=file_preset, overrides=None)
            cfg = base
        _merge_into(cfg, loaded, "")
    if overrides:
        _merge_into(cfg, overrides, "")
    validate(cfg)
    return cfg


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check every field's type and range; resolve registry names. Raises ConfigError."""
    from .attacks import ATTACKS
    from .data.datasets import DATASETS
    from .defenses import DEFENSES
    from .models import MODELS

    d, t, s = cfg.data, cfg.train, cfg.skymask
    _check(isinstance(cfg.clients, int) and cfg.clients >= 2, f"clients must be an integer >= 2, got {cfg.clients!r}")
    _check(
        _is_num(cfg.malicious_fraction) and 0.0 <= cfg.malicious_fraction < 1.0,
        f"malicious_fraction must be in [0, 1), got {cfg.malicious_fraction!r}",
    )
    _check(isinstance(cfg.rounds, int) and cfg.rounds >= 1, f"rounds must be an integer >= 1, got {cfg.rounds!r}")
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, f"seed must be a non-negative integer, got {cfg.seed!r}")
    _check(isinstance(cfg.eval_every, int) and cfg.eval_every >= 1, f"eval_every must be >= 1, got {cfg.eval_every!r}")
    _check(cfg.malicious_selection in ("first", "random"), "malicious_selection must be 'first' or 'random'")
    _check(cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}")
    _check(cfg.workers is None or (isinstance(cfg.workers, int) and cfg.workers >= 1), "workers must be >= 1")
    DATASETS.get(d.dataset)
    _check(d.data_dir is None or Path(d.data_dir).is_dir(), f"data directory {d.data_dir!r} does not exist")
    MODELS.get(cfg.model)
    _check(d.partition in ("bias", "dirichlet", "iid", "subject"), f"partition must be bias, dirichlet, iid or subject, got {d.partition!r}")
    _check(_is_num(d.bias) and 0.0 <= d.bias <= 1.0, f"bias must be in [0, 1], got {d.bias!r}")
    _check(_is_num(d.alpha) and d.alpha > 0, f"alpha must be > 0, got {d.alpha!r}")
    _check(isinstance(d.root_size, int) and d.root_size >= 1, f"root_size must be an integer >= 1, got {d.root_size!r}")
    _check(_is_num(d.root_p) and 0.0 <= d.root_p <= 1.0, f"root_p must be in [0, 1], got {d.root_p!r}")
    _check(d.samples_per_client is None or (isinstance(d.samples_per_client, int) and d.samples_per_client >= 1),
           "samples_per_client must be >= 1")
    _check(t.local_epochs >= 1 if isinstance(t.local_epochs, int) else False, f"local_epochs must be an integer >= 1, got {t.local_epochs!r}")
    _check(t.local_steps is None or (isinstance(t.local_steps, int) and t.local_steps >= 1), "local_steps must be >= 1")
    _check(isinstance(t.batch_size, int) and t.batch_size >= 1, f"batch_size must be an integer >= 1, got {t.batch_size!r}")
    _check(_is_num(t.local_lr) and t.local_lr > 0, f"local_lr must be > 0, got {t.local_lr!r}")
    _check(_is_num(t.global_lr) and t.global_lr > 0, f"global_lr must be > 0, got {t.global_lr!r}")
    _check(t.grad_clip is None or (_is_num(t.grad_clip) and t.grad_clip > 0), "grad_clip must be > 0 or null")
    _check(t.server_budget in ("matched", "epoch"), f"server_budget must be matched or epoch, got {t.server_budget!r}")
    _check(t.client_exec in ("auto", "sequential", "vmap"), f"client_exec must be auto, sequential or vmap, got {t.client_exec!r}")
    _check(isinstance(t.vmap_chunk, int) and t.vmap_chunk >= 1, "vmap_chunk must be >= 1")
    _check(_is_num(s.mask_init), "skymask.mask_init must be a number")
    _check(isinstance(s.mask_epochs, int) and s.mask_epochs >= 1, "skymask.mask_epochs must be >= 1")
    _check(s.optimizer in ("sgd", "adam"), f"skymask.optimizer must be sgd or adam, got {s.optimizer!r}")
    _check(s.mask_lr is None or (_is_num(s.mask_lr) and s.mask_lr > 0), "skymask.mask_lr must be > 0")
    _check(s.mask_grad_clip is None or (_is_num(s.mask_grad_clip) and s.mask_grad_clip > 0), "skymask.mask_grad_clip must be > 0")
    _check(_is_num(s.threshold) and 0.0 < s.threshold < 1.0, "skymask.threshold must be in (0, 1)")
    _check(s.kernel in ("auto", "compiled", "eager"), f"skymask.kernel must be auto, compiled or eager, got {s.kernel!r}")
    _check(s.fallback in ("server", "fedavg"), f"skymask.fallback must be server or fedavg, got {s.fallback!r}")
    _check(s.select in ("gmm2", "bic"), f"skymask.select must be gmm2 or bic, got {s.select!r}")
    _check(s.shards is None or (isinstance(s.shards, int) and s.shards >= 1), "skymask.shards must be >= 1")
    _check(_is_num(s.shard_memory_gb) and s.shard_memory_gb > 0, "skymask.shard_memory_gb must be > 0")
    _check(isinstance(s.early_stop_step, int) and s.early_stop_step >= 0, "skymask.early_stop_step must be >= 0")
    ATTACKS.get(cfg.attack).check(cfg)
    DEFENSES.get(cfg.defense).check(cfg)
    return cfg


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML and hashing."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return clean(dataclasses.asdict(cfg))


def config_hash(cfg: ExperimentConfig) -> str:
    """Stable short hash of everything that changes results (not where they go)."""
    d = to_dict(cfg)
    for key in ("out", "address", "workers"):
        d.pop(key, None)
    d["skymask"].pop("kernel", None)  # how the mask step runs, not what it computes
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the config as YAML that :func:`build_config` reads back."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
