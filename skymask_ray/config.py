"""Typed experiment configuration: dataclasses, presets, YAML I/O and validation.

Every field is declared once, like a component's ``Params``: its type (``Literal``
for string choices, ``X | None`` where None means something), its bounds and its
help text (:func:`skymask_ray.params.declare`); the command line's options and
their help are generated from these declarations. Configs are validated once,
where they enter (CLI or YAML), by one path (:func:`validate_fields`: the declared
types and bounds, then each ``validate()`` for rules between fields); everything
past :func:`skymask_ray.experiment.build_config` may trust them. Every bad value
raises a one-line :class:`ConfigError` naming the field and the allowed range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .params import check, declare
from .storage import atomic_write_text


@dataclass
class DataConfig:
    """Which dataset, where to find it and how to split it over clients."""

    dataset: str = declare("fmnist", help="Dataset (`skymask-ray list` shows them).")
    data_dir: str | None = declare(None, help="Directory holding the dataset files.",
                                   none="$SKYMASK_DATA, then the system's dataset folders")
    partition: Literal["bias", "dirichlet", "iid", "subject"] = declare(
        "bias", help="How the training data is split over the clients.")
    bias: float = declare(0.5, ge=0, le=1, help="Non-IID bias b of the paper's split (1/C = IID).")
    alpha: float = declare(0.5, gt=0, help="Dirichlet concentration (partition dirichlet).")
    root_size: int = declare(100, ge=1, help="Samples in the server's clean root set.")
    root_p: float = declare(0.1, ge=0, le=1, help="Fraction of label 1 in the root set.")
    samples_per_client: int | None = declare(
        None, ge=1, help="Samples per client: a cap, or drawn with replacement when clients x S exceeds the data.",
        none="all of its share")
    synthetic_train: int = declare(6000, ge=1, help="Training samples of the `synthetic` dataset.")
    synthetic_test: int = declare(1000, ge=1, help="Test samples of the `synthetic` dataset.")
    synthetic_shape: tuple[int, ...] = declare((1, 28, 28), help="Shape of one `synthetic` sample: 1 to 3 sizes.")
    synthetic_classes: int = declare(10, ge=2, help="Classes of the `synthetic` dataset.")

    def validate(self) -> None:
        """Not bounds: synthetic_shape's length and sizes, and that a given data_dir is a folder."""
        shape = self.synthetic_shape
        if not 1 <= len(shape) <= 3 or not all(v >= 1 for v in shape):
            raise ValueError(f"synthetic_shape must be 1 to 3 positive integers, got {list(shape)!r}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"data_dir {self.data_dir!r} does not exist (or is not a folder)")


@dataclass
class TrainConfig:
    """Local SGD of the clients and of the server's own model on the root data."""

    local_epochs: int = declare(1, ge=1, help="Local epochs per round.")
    local_steps: int | None = declare(None, ge=1, help="Local SGD steps per round instead of epochs.",
                                      none="null = epochs")
    batch_size: int = declare(32, ge=1, help="Local batch size.")
    local_lr: float = declare(0.5, gt=0, help="Clients' SGD learning rate.")
    global_lr: float = declare(0.5, gt=0, help="Server learning rate on the aggregated update.")
    grad_clip: float | None = declare(0.01, gt=0, help="Element-wise gradient clamp (the paper's code: 0.01).",
                                      none="null = no clamp")
    server_budget: Literal["matched", "epoch"] = declare(
        "matched", help="Server SGD steps on its root set: matched (the median client's) or epoch (one pass).")
    client_exec: Literal["auto", "sequential", "vmap"] = declare(
        "auto", help="How a worker trains its clients: one by one (sequential) or stacked with torch.func (vmap).")
    vmap_chunk: int = declare(32, ge=1, help="Clients per vmap call.")


SelectRule = Literal["gmm2", "bic", "silhouette", "spectral"]
SELECT_RULES: tuple[str, ...] = typing.get_args(SelectRule)  # skymask.select; the rules are skymask/select.py's


@dataclass
class SkyMaskConfig:
    """SkyMask mask training and selection (SPEC section 5); every number is a knob."""

    mask_init: float = declare(1.0, help="Initial value of every mask weight.")
    mask_epochs: int = declare(20, ge=1, help="Mask training epochs per round.")
    optimizer: Literal["sgd", "adam"] = declare("sgd", help="Mask optimizer: sgd (the paper's code) or adam.")
    mask_lr: float | None = declare(None, gt=0, help="Mask learning rate.",
                                    none="1e7 (1e8 for resnet20) for sgd, 0.1 for adam")
    mask_grad_clip: float | None = declare(1e-7, gt=0, help="Element-wise clamp of the mask gradient.",
                                           none="no clamp")
    mask_batch_size: int | None = declare(None, ge=1, help="Root samples per mask step.",
                                          none="the whole root set per step")
    early_stop_step: int = declare(10, ge=0, help="Mask steps between early-stopping checks.")
    early_stop_delta: float = declare(1e-2, help="Least loss improvement between checks that keeps training.")
    threshold: float = declare(0.5, gt=0, lt=1, help="Mask weights above it count as 1 in the mask vector.")
    fallback: Literal["server", "fedavg"] = declare(
        "server", help="What to apply when no client is in the server's cluster: server or fedavg.")
    shards: int | None = declare(None, ge=1, help="Parameter shards of SkyMask's mask trainer.",
                                 none="auto, from memory", flag="--mask-shards")
    shard_memory_gb: float = declare(8.0, gt=0, help="Memory budget one trainer shard may use for the N x P state.")
    kernel: Literal["auto", "compiled", "eager"] = declare(
        "auto", help="Mask step: compiled (torch.compile, one fused pass), eager, or auto (compiled if it works).")
    select: SelectRule = declare(
        "gmm2", help="Clustering rule: gmm2 (the paper: always split), bic or silhouette (split or not), spectral.")
    min_silhouette: float = declare(0.5, ge=-1, le=1,
                                    help="select silhouette: keep the split only at this mean silhouette or above.")
    gmm_restarts: int = declare(1, ge=1, help="2-component GMM fits per round, best likelihood kept "
                                              "(1: the paper's single fit).")
    neighbors: int | None = declare(None, ge=1, help="select spectral: nearest masks each mask links to.",
                                    none="ceil(0.15 K), at least 3")
    max_conductance: float = declare(0.1, ge=0, le=1, help="select spectral: keep the cut only at this "
                                                           "conductance or below (1: always).")
    keep_gram: bool = declare(False, help="Hand each round's Gram matrix of the binary masks ((K+1) x (K+1), row 0 "
                                          "the server) to round callbacks as info['mask_gram'], to re-cluster it "
                                          "offline; it never reaches the results folder.")


@dataclass
class ExperimentConfig:
    """One federated run: data, model, population, threat, defense and execution."""

    data: DataConfig = declare(factory=DataConfig, help="The dataset and its split.")
    model: str = declare("cnn", help="Model (`skymask-ray list` shows them).")
    clients: int = declare(100, ge=2, help="Clients in the population.")
    malicious_fraction: float = declare(0.2, ge=0, lt=1, help="Malicious fraction of the population.",
                                        flag="--malicious")
    malicious_selection: Literal["random", "first"] = declare(
        "random", help="Who is malicious: random (a seeded random set, so client ids say nothing) or first "
                       "(clients 0..f-1 after the split's seeded permutation; the paper presets keep it so their "
                       "rows stay).")
    cohort: int | None = declare(None, ge=2, help="Clients sampled per round (at most clients).",
                                 none="all clients, every round")
    malicious_sampling: Literal["pool", "fixed"] | None = declare(
        None, help="pool: attackers live in the population and are sampled like anyone; fixed: every cohort holds "
                   "round(cohort x fraction) attackers.", none="pool")
    dropout: float = declare(0.0, ge=0, lt=1, help="Probability that a sampled client fails to report.")
    declared_f: int | None = declare(None, ge=0, help="f given to f-based defenses (below the cohort).",
                                     none="round(cohort x malicious fraction)")
    attack: str = declare("none", help="Attack (`skymask-ray list` shows them).")
    attack_params: dict[str, Any] = declare(factory=dict, help="The attack's parameters (`skymask-ray list`).")
    defense: str = declare("skymask", help="Defense (`skymask-ray list` shows them).")
    defense_params: dict[str, Any] = declare(factory=dict, help="The defense's parameters, and a pre-aggregator's "
                                                                "(`skymask-ray list`).")
    rounds: int = declare(30, ge=1, help="Federated rounds.")
    seed: int = declare(0, ge=0, help="Seed of everything random (split, attackers, cohorts, training).")
    eval_every: int = declare(1, ge=1, help="Evaluate the global model every this many rounds.")
    train: TrainConfig = declare(factory=TrainConfig, help="Local training of the clients and the server.")
    skymask: SkyMaskConfig = declare(factory=SkyMaskConfig, help="SkyMask's mask training and selection.")
    device: Literal["auto", "cpu", "cuda"] = declare("auto", help="Where clients and the mask trainer compute.")
    address: str | None = declare(None, help="Ray cluster address.", none="local, or $RAY_ADDRESS")
    connect_timeout_s: float = declare(30.0, gt=0, help="Seconds to wait for the cluster at --address.",
                                       flag="--connect-timeout")
    workers: int | None = declare(None, ge=1, help="Client-pool actors.", none="one per CPU core")
    workers_per_gpu: int | None = declare(
        None, ge=1, help="Client workers sharing each GPU.",
        none="from the model's size and the GPU's memory, at most one per CPU of its node; 4 if unknown")
    out: str | None = declare(None, help="Run folder when none is given to the run (the CLI's --out always is).",
                              none="results/run")

    def validate(self) -> None:
        """Cross-field: cohort <= clients, declared_f < cohort, and at least one benign client under attack."""
        if self.cohort is not None and self.cohort > self.clients:
            raise ValueError(f"cohort must be at most clients ({self.clients}), got {self.cohort!r}")
        if self.declared_f is not None and self.declared_f >= self.cohort_size:
            raise ValueError(f"declared_f must be below the cohort ({self.cohort_size}), got {self.declared_f!r}")
        if self.attack != "none" and (self.num_malicious >= self.clients
                                      or round(self.cohort_size * self.malicious_fraction) >= self.cohort_size):
            raise ValueError(f"malicious_fraction {self.malicious_fraction:g} of {self.clients} clients makes every "
                             f"client malicious (f = {self.num_malicious}); at least one benign client is needed")

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


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading a number with an exponent but no dot (``1e-07``, as Python prints it)
    as the float it is: YAML 1.1 makes it a string, and a config value copied from ``list`` was then refused."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def read_yaml(text: str) -> Any:
    """A YAML document or scalar as config files, ``--set`` and ``--only`` read it (see :class:`_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping); one-line errors otherwise."""
    try:
        loaded = read_yaml(path.read_bytes().decode("utf-8"))
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


def validate_fields(cfg: ExperimentConfig) -> ExperimentConfig:
    """Every field's type, bound and choice as declared, then the cross-field rules (the sections' and
    :meth:`ExperimentConfig.validate`); names are checked against the registries by :mod:`skymask_ray.experiment`."""
    check(cfg)
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
    for key in ("kernel", "keep_gram"):  # how the mask step runs and what it hands back, not what it computes
        d["skymask"].pop(key, None)
    for key in ("attack_params", "defense_params"):  # free mappings: 1 from --set and 1.0 from YAML are one value
        d[key] = _ints_as_floats(d[key])
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the config (atomically) as YAML that :func:`build_config` reads back (:func:`skymask_ray.experiment.build_config`)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
