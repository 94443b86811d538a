"""Round rows: schema, detection metrics, and a Parquet file appended round by round.

Each round appends one row. The file is rewritten atomically after every
round (temporary file, fsync, ``os.replace``: :mod:`skymask_ray.storage`), so a
run killed at any moment leaves a valid ``rounds.parquet`` holding every
finished round, and an earlier run's file is replaced only by a complete new one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .config import ExperimentConfig, to_dict
from .storage import atomic_write

CONFIG_SKIP = ("out", "address", "connect_timeout_s")  # where a run goes and how it connects: not what it is


def _arrow_of(hint: Any) -> pa.DataType:
    """Parquet type of a config field: numbers, strings, bools, lists of ints; mappings as JSON text."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _arrow_of(args[0])
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return pa.struct([(f.name, _arrow_of(hints[f.name])) for f in fields(hint)])
    if typing.get_origin(hint) is tuple:
        return pa.list_(pa.int64())
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(hint, pa.string())


def config_type() -> pa.DataType:
    """The ``config`` column: one struct holding every field a study may vary (nested sections as structs)."""
    hints = typing.get_type_hints(ExperimentConfig)
    return pa.struct([(f.name, _arrow_of(hints[f.name])) for f in fields(ExperimentConfig) if f.name not in CONFIG_SKIP])


def config_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg`` as a value of :func:`config_type` (attack/defense parameters as JSON text)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in CONFIG_SKIP}
    for k in ("attack_params", "defense_params"):
        d[k] = json.dumps(d[k], sort_keys=True)
    return d


def flat_config(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A ``config`` column value as {dotted name: value}; attack/defense parameters (JSON text) expanded too."""
    flat: dict[str, Any] = {}
    for name, value in record.items():
        dotted = f"{prefix}{name}"
        if name in ("attack_params", "defense_params") and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            flat.update(flat_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _col(arrow: pa.DataType, *, run_key: bool = False) -> Any:
    """A row field with its Parquet type; ``run_key`` marks the fields that name a run in reports."""
    return field(metadata={"arrow": arrow, "run_key": run_key})


@dataclass
class RoundRow:
    """One round's results: the single definition of a row (Parquet schema, bench and report read it).

    Times in seconds, memory in MB, accuracy in [0, 1]; TPR/FPR are None where
    undefined (no malicious or no benign client among the rows scored).
    """

    round: int = _col(pa.int32())
    dataset: str = _col(pa.string(), run_key=True)
    model: str = _col(pa.string(), run_key=True)
    clients: int = _col(pa.int32(), run_key=True)
    malicious_fraction: float = _col(pa.float64(), run_key=True)
    malicious: int = _col(pa.int32())
    attack: str = _col(pa.string(), run_key=True)
    defense: str = _col(pa.string(), run_key=True)
    seed: int = _col(pa.int64(), run_key=True)
    accuracy: float | None = _col(pa.float64())
    loss: float | None = _col(pa.float64())
    backdoor_success: float | None = _col(pa.float64())
    tp: int = _col(pa.int32())
    fp: int = _col(pa.int32())
    tn: int = _col(pa.int32())
    fn: int = _col(pa.int32())
    tpr: float | None = _col(pa.float64())
    fpr: float | None = _col(pa.float64())
    accepted: int = _col(pa.int32())
    invalid: int = _col(pa.int32())
    fallback: bool = _col(pa.bool_())
    t_clients: float = _col(pa.float64())
    t_server: float = _col(pa.float64())
    t_attack: float = _col(pa.float64())
    t_defense: float = _col(pa.float64())
    t_eval: float = _col(pa.float64())
    t_round: float = _col(pa.float64())
    peak_rss_mb: float = _col(pa.float64())  # summed per-process peak RSS: shared pages counted in each process
    mem_pss_mb: float | None = _col(pa.float64())  # the run's memory in use at round end: summed PSS (shared once)
    trained_clients: int = _col(pa.int32())
    mask_on_mean: float | None = _col(pa.float64())
    mask_steps: int | None = _col(pa.int32())
    t_mask_train: float | None = _col(pa.float64())
    t_mask_cluster: float | None = _col(pa.float64())
    single_component: bool | None = _col(pa.bool_())  # skymask.select bic found one cluster: everyone accepted
    cohort: int | None = _col(pa.int32())  # clients sampled this round (K)
    malicious_in_cohort: int | None = _col(pa.int32())  # attackers among them (ground truth)
    dropped: int | None = _col(pa.int32())  # sampled clients that did not report
    declared_f: int | None = _col(pa.int32())  # the f handed to f-based defenses
    skipped: str | None = _col(pa.string())  # why no update was applied (too few reports), else None
    config: dict[str, Any] | None = _col(config_type())  # every config field (struct): group rows by any of them
    config_hash: str = _col(pa.string())
    version: str = _col(pa.string())

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoundRow":
        """A row read back from Parquet; columns an older file lacks are None."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


SCHEMA = pa.schema([(f.name, f.metadata["arrow"]) for f in fields(RoundRow)])
RUN_KEYS = tuple(f.name for f in fields(RoundRow) if f.metadata["run_key"])
COLUMNS = SCHEMA.names


@dataclass
class Detection:
    """Confusion counts over clients; positive = rejected, malicious = the truth."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def tpr(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def fpr(self) -> float | None:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else None


def detection(accepted: torch.Tensor, malicious: torch.Tensor) -> Detection:
    """TP: malicious rejected; FP: benign rejected; TN: benign accepted; FN: malicious accepted."""
    acc, mal = accepted.bool().cpu(), malicious.bool().cpu()
    return Detection(
        tp=int((~acc & mal).sum()), fp=int((~acc & ~mal).sum()), tn=int((acc & ~mal).sum()), fn=int((acc & mal).sum())
    )


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


MASK_SCHEMA = pa.schema(
    [
        ("round", pa.int32()),
        ("index", pa.int32()),
        ("pc1", pa.float64()),
        ("pc2", pa.float64()),
        ("label", pa.int32()),
        ("malicious", pa.bool_()),
        ("accepted", pa.bool_()),
        ("is_server", pa.bool_()),
    ]
)


class ParquetLog:
    """Append rows to ``path`` (Parquet), rewriting it atomically after each append.

    ``keep_existing`` keeps rows already there (resume); otherwise the log starts
    empty and an existing file is left untouched until the first append replaces it.
    """

    def __init__(self, path: str | Path, schema: pa.Schema = SCHEMA, keep_existing: bool = False) -> None:
        self.path = Path(path)
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        if keep_existing and self.path.exists():
            self.rows = read_parquet(self.path).to_pylist()

    def append(self, *rows: dict[str, Any]) -> None:
        names = self.schema.names
        for row in rows:
            missing = [c for c in names if c not in row]
            if missing:
                raise KeyError(f"row lacks columns {missing}")
            self.rows.append({c: _clean(row[c]) for c in names})
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        atomic_write(self.path, lambda fh: pq.write_table(table, fh))

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop rows for which ``keep`` is false (resume from an earlier checkpoint)."""
        self.rows = [r for r in self.rows if keep(r)]


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file read through a single open handle.

    A by-path read opens the file twice (footer, then data); a running
    :class:`ParquetLog` may ``os.replace`` it in between, mixing two versions.
    Holding one handle pins one version (the inode stays alive after a replace). The handle is
    Arrow's own: through a Python file object, Arrow's reader threads call back into Python, and
    about one process in three then aborted at exit ("terminate called without an active exception").
    """
    try:
        with pa.OSFile(str(path), "rb") as fh:
            return pq.read_table(fh, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0][:160]})") from None


def write_rows(table: pa.Table, path: str | Path) -> Path:
    """Write a table of rows (a study's, say) atomically as one zstd-compressed Parquet file."""
    return atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def read_rounds(path: str | Path) -> pa.Table:
    """Read one rounds.parquet, or every ``rounds.parquet`` below a directory, as one table."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("rounds.parquet"))
        if not files:
            raise FileNotFoundError(f"no rounds.parquet below {p}")
        return pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
    return read_parquet(p)

