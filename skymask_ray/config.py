"""Typed experiment configuration: dataclasses, presets, YAML I/O and validation.

Configs are validated once, where they enter (CLI or YAML); everything past
:func:`skymask_ray.experiment.build_config` may trust them. Every bad value raises a one-line
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
from .params import check_types
from .storage import atomic_write_text


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


SELECT_RULES = ("gmm2", "bic", "silhouette", "spectral")  # skymask.select; the rules are skymask/select.py's


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
    select: str = "gmm2"  # clustering rule: gmm2 (the paper: always split) | bic | silhouette (split or not) | spectral
    min_silhouette: float = 0.5  # select silhouette: keep the split only at this mean silhouette or above
    gmm_restarts: int = 1  # 2-component GMM fits per round, best likelihood kept (1: the paper's single fit)
    neighbors: int | None = None  # select spectral: nearest masks each mask links to (None: ceil(0.15 K), at least 3)
    max_conductance: float = 0.1  # select spectral: keep the cut only at this conductance or below (1: always)


@dataclass
class ExperimentConfig:
    """One federated run: data, model, population, threat, defense and execution."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "cnn"
    clients: int = 100
    malicious_fraction: float = 0.2
    # random: a seeded random set, so client ids say nothing about who is malicious | first: clients 0..f-1
    # (after the split's seeded permutation; the paper presets keep it so their rows stay)
    malicious_selection: str = "random"
    cohort: int | None = None  # clients sampled per round (None: all N, full participation)
    malicious_sampling: str | None = None  # pool | fixed (None: pool when cohort < clients)
    dropout: float = 0.0  # probability that a sampled client fails to report
    declared_f: int | None = None  # f that f-based defenses assume (None: round(cohort * malicious_fraction))
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
    connect_timeout_s: float = 30.0  # how long to wait for the cluster at ``address`` before giving up
    workers: int | None = None  # client-pool actors (None: one per CPU core of the cluster)
    workers_per_gpu: int | None = None  # client workers sharing each GPU (None: from model size and GPU memory)
    out: str | None = None

    @property
    def num_malicious(self) -> int:
        """Malicious clients in the population: round(N * malicious_fraction)."""
        return int(round(self.clients * self.malicious_fraction))

    @property
    def cohort_size(self) -> int:
        """K: clients sampled per round."""
        return self.clients if self.cohort is None else self.cohort

    @property
    def sampling(self) -> str:
        """How attackers enter a cohort: pool (sampled like everyone) or fixed (exactly round(K * fraction))."""
        return self.malicious_sampling or "pool"

    @property
    def num_declared_f(self) -> int:
        """The f handed to defenses: declared, never the realised count (which is ground truth)."""
        if self.declared_f is not None:
            return self.declared_f
        return int(round(self.cohort_size * self.malicious_fraction))


_PAPER_TRAIN = {"local_epochs": 1, "batch_size": 32, "local_lr": 0.5, "global_lr": 0.5, "grad_clip": 0.01}

PRESETS: dict[str, dict[str, Any]] = {
    "paper-fmnist": {
        "data": {"dataset": "fmnist", "partition": "bias", "bias": 0.5, "root_size": 100},
        "model": "cnn",
        "clients": 100,
        "malicious_fraction": 0.2,
        "malicious_selection": "first",
        "train": _PAPER_TRAIN,
    },
    "paper-cifar10": {
        "data": {"dataset": "cifar10", "partition": "bias", "bias": 0.5, "root_size": 100},
        "model": "resnet20",
        "clients": 100,
        "malicious_fraction": 0.2,
        "malicious_selection": "first",
        "train": {**_PAPER_TRAIN, "batch_size": 64},
    },
    "paper-har": {
        "data": {"dataset": "har", "partition": "subject", "root_size": 100},
        "model": "lr",
        "clients": 30,
        "malicious_fraction": 0.2,
        "malicious_selection": "first",
        "train": _PAPER_TRAIN,
    },
}

_SECTIONS = {"data": DataConfig, "train": TrainConfig, "skymask": SkyMaskConfig}


def _merge_into(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set dataclass fields of ``obj`` from ``values``; unknown keys are errors."""
    names = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {where}{key!r} must be a name (a string)")
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
        elif isinstance(current, dict) and isinstance(value, dict):  # attack/defense params: merged key by key
            setattr(obj, key, {**current, **value})
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


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping); one-line errors otherwise."""
    try:
        loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not a text (UTF-8) file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping (key: value lines), not a {type(loaded).__name__}")
    return loaded


def assemble_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Preset, then YAML file, then overrides (nested dicts), then the fields' validation.

    Component names and parameters are checked one layer up
    (:func:`skymask_ray.experiment.build_config`), so this module imports
    nothing from the registries.
    """
    cfg = ExperimentConfig()
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        _merge_into(cfg, PRESETS[preset], "")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = load_yaml_mapping(path, "config file")
        file_preset = loaded.pop("preset", None)
        if file_preset is not None:
            base = assemble_config(preset=file_preset, overrides=None)
            cfg = base
        _merge_into(cfg, loaded, "")
    if overrides:
        _merge_into(cfg, overrides, "")
    validate_fields(cfg)
    return cfg


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate_fields(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check every field's type and range (no registry: names are checked by :mod:`skymask_ray.experiment`)."""
    check_types(cfg)
    d, t, s = cfg.data, cfg.train, cfg.skymask
    _check(cfg.clients >= 2, f"clients must be an integer >= 2, got {cfg.clients!r}")
    _check(0.0 <= cfg.malicious_fraction < 1.0, f"malicious_fraction must be in [0, 1), got {cfg.malicious_fraction!r}")
    _check(cfg.rounds >= 1, f"rounds must be an integer >= 1, got {cfg.rounds!r}")
    _check(cfg.seed >= 0, f"seed must be a non-negative integer, got {cfg.seed!r}")
    _check(cfg.eval_every >= 1, f"eval_every must be >= 1, got {cfg.eval_every!r}")
    _check(cfg.malicious_selection in ("first", "random"), "malicious_selection must be 'first' or 'random'")
    _check(cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}")
    _check(cfg.workers is None or cfg.workers >= 1, "workers must be >= 1")
    _check(cfg.workers_per_gpu is None or cfg.workers_per_gpu >= 1, "workers_per_gpu must be >= 1")
    _check(cfg.cohort is None or 2 <= cfg.cohort <= cfg.clients,
           f"cohort must be an integer in [2, clients={cfg.clients}], got {cfg.cohort!r}")
    _check(cfg.malicious_sampling in (None, "pool", "fixed"),
           f"malicious_sampling must be pool or fixed, got {cfg.malicious_sampling!r}")
    _check(0.0 <= cfg.dropout < 1.0, f"dropout must be in [0, 1), got {cfg.dropout!r}")
    _check(cfg.declared_f is None or 0 <= cfg.declared_f < cfg.cohort_size,
           f"declared_f must be in [0, cohort), got {cfg.declared_f!r}")
    _check(cfg.connect_timeout_s > 0, f"connect_timeout_s must be > 0, got {cfg.connect_timeout_s!r}")
    _check(d.data_dir is None or Path(d.data_dir).is_dir(), f"data directory {d.data_dir!r} does not exist")
    _check(d.partition in ("bias", "dirichlet", "iid", "subject"), f"partition must be bias, dirichlet, iid or subject, got {d.partition!r}")
    _check(0.0 <= d.bias <= 1.0, f"bias must be in [0, 1], got {d.bias!r}")
    _check(d.alpha > 0, f"alpha must be > 0, got {d.alpha!r}")
    _check(d.root_size >= 1, f"root_size must be an integer >= 1, got {d.root_size!r}")
    _check(0.0 <= d.root_p <= 1.0, f"root_p must be in [0, 1], got {d.root_p!r}")
    _check(d.samples_per_client is None or d.samples_per_client >= 1,
           f"samples_per_client must be an integer >= 1, got {d.samples_per_client!r}")
    _check(d.synthetic_train >= 1, f"synthetic_train must be an integer >= 1, got {d.synthetic_train!r}")
    _check(d.synthetic_test >= 1, f"synthetic_test must be an integer >= 1, got {d.synthetic_test!r}")
    _check(1 <= len(d.synthetic_shape) <= 3 and all(v >= 1 for v in d.synthetic_shape),
           f"synthetic_shape must be 1 to 3 positive integers, got {list(d.synthetic_shape)!r}")
    _check(d.synthetic_classes >= 2, f"synthetic_classes must be an integer >= 2, got {d.synthetic_classes!r}")
    _check(t.local_epochs >= 1, f"local_epochs must be an integer >= 1, got {t.local_epochs!r}")
    _check(t.local_steps is None or t.local_steps >= 1, "local_steps must be >= 1")
    _check(t.batch_size >= 1, f"batch_size must be an integer >= 1, got {t.batch_size!r}")
    _check(t.local_lr > 0, f"local_lr must be a finite number > 0, got {t.local_lr!r}")
    _check(t.global_lr > 0, f"global_lr must be a finite number > 0, got {t.global_lr!r}")
    _check(t.grad_clip is None or t.grad_clip > 0, "grad_clip must be > 0 or null")
    _check(t.server_budget in ("matched", "epoch"), f"server_budget must be matched or epoch, got {t.server_budget!r}")
    _check(t.client_exec in ("auto", "sequential", "vmap"), f"client_exec must be auto, sequential or vmap, got {t.client_exec!r}")
    _check(t.vmap_chunk >= 1, "vmap_chunk must be >= 1")
    _check(s.mask_epochs >= 1, "skymask.mask_epochs must be >= 1")
    _check(s.optimizer in ("sgd", "adam"), f"skymask.optimizer must be sgd or adam, got {s.optimizer!r}")
    _check(s.mask_lr is None or s.mask_lr > 0, "skymask.mask_lr must be > 0")
    _check(s.mask_grad_clip is None or s.mask_grad_clip > 0, "skymask.mask_grad_clip must be > 0")
    _check(s.mask_batch_size is None or s.mask_batch_size >= 1, "skymask.mask_batch_size must be >= 1")
    _check(0.0 < s.threshold < 1.0, "skymask.threshold must be in (0, 1)")
    _check(s.kernel in ("auto", "compiled", "eager"), f"skymask.kernel must be auto, compiled or eager, got {s.kernel!r}")
    _check(s.fallback in ("server", "fedavg"), f"skymask.fallback must be server or fedavg, got {s.fallback!r}")
    _check(s.select in SELECT_RULES,
           f"skymask.select must be {', '.join(SELECT_RULES[:-1])} or {SELECT_RULES[-1]}, got {s.select!r}")
    _check(-1.0 <= s.min_silhouette <= 1.0, f"skymask.min_silhouette must be in [-1, 1], got {s.min_silhouette!r}")
    _check(s.gmm_restarts >= 1, f"skymask.gmm_restarts must be >= 1, got {s.gmm_restarts!r}")
    _check(s.neighbors is None or s.neighbors >= 1, f"skymask.neighbors must be >= 1 or null, got {s.neighbors!r}")
    _check(0.0 <= s.max_conductance <= 1.0, f"skymask.max_conductance must be in [0, 1], got {s.max_conductance!r}")
    _check(s.shards is None or s.shards >= 1, "skymask.shards must be >= 1")
    _check(s.shard_memory_gb > 0, "skymask.shard_memory_gb must be > 0")
    _check(s.early_stop_step >= 0, "skymask.early_stop_step must be >= 0")
    _check(cfg.attack == "none" or (cfg.num_malicious < cfg.clients
                                    and round(cfg.cohort_size * cfg.malicious_fraction) < cfg.cohort_size),
           f"malicious_fraction {cfg.malicious_fraction:g} of {cfg.clients} clients makes every client malicious "
           f"(f = {cfg.num_malicious}); at least one benign client is needed")
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


HOW_IT_RAN = frozenset({  # dotted config fields that say where or how fast a run ran, not what it computed
    "data.data_dir", "device", "workers", "workers_per_gpu", "train.client_exec", "train.vmap_chunk",
    "skymask.kernel", "skymask.shards", "skymask.shard_memory_gb",
})
"""Fields a report does not tell runs apart by. :func:`config_hash` drops fewer of them: a resumed run
must continue on the same device and client path, whose float rounding may differ, so only ``workers``
and ``skymask.kernel`` leave the hash (with ``out``, ``address``, ``connect_timeout_s`` and ``rounds``)."""


def _ints_as_floats(x: Any) -> Any:
    """``x`` with every integer (not bool) inside it as a float, so that equal numbers hash alike."""
    if isinstance(x, dict):
        return {k: _ints_as_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_ints_as_floats(v) for v in x]
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def config_hash(cfg: ExperimentConfig) -> str:
    """Stable short hash of everything that changes what each round computes.

    Not where results go or how the cluster is reached, and not ``rounds``:
    a finished run continues from its checkpoint when ``rounds`` is raised.
    """
    d = to_dict(cfg)
    for key in ("out", "address", "workers", "connect_timeout_s", "rounds"):  # rounds: a run may be extended
        d.pop(key, None)
    d["skymask"].pop("kernel", None)  # how the mask step runs, not what it computes
    for key in ("attack_params", "defense_params"):  # free mappings: 1 from --set and 1.0 from YAML are one value
        d[key] = _ints_as_floats(d[key])
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the config (atomically) as YAML that :func:`build_config` reads back (:func:`skymask_ray.experiment.build_config`)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
