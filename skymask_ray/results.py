"""Round rows: schema, detection metrics, and a Parquet file appended round by round.

Each round appends one row. The file is rewritten atomically after every
round (write to a temporary file, then ``os.replace``), so a run killed at
any moment leaves a valid ``rounds.parquet`` holding every finished round.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

SCHEMA = pa.schema(
    [
        ("round", pa.int32()),
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("clients", pa.int32()),
        ("malicious_fraction", pa.float64()),
        ("malicious", pa.int32()),
        ("attack", pa.string()),
        ("defense", pa.string()),
        ("seed", pa.int64()),
        ("accuracy", pa.float64()),
        ("loss", pa.float64()),
        ("backdoor_success", pa.float64()),
        ("tp", pa.int32()),
        ("fp", pa.int32()),
        ("tn", pa.int32()),
        ("fn", pa.int32()),
        ("tpr", pa.float64()),
        ("fpr", pa.float64()),
        ("accepted", pa.int32()),
        ("invalid", pa.int32()),
        ("fallback", pa.bool_()),
        ("t_clients", pa.float64()),
        ("t_server", pa.float64()),
        ("t_attack", pa.float64()),
        ("t_defense", pa.float64()),
        ("t_eval", pa.float64()),
        ("t_round", pa.float64()),
        ("peak_rss_mb", pa.float64()),
        ("trained_clients", pa.int32()),
        ("mask_on_mean", pa.float64()),
        ("mask_steps", pa.int32()),
        ("t_mask_train", pa.float64()),
        ("t_mask_cluster", pa.float64()),
        ("config_hash", pa.string()),
        ("version", pa.string()),
    ]
)
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

    ``keep_existing`` keeps rows already there (resume); otherwise the file starts empty.
    """

    def __init__(self, path: str | Path, schema: pa.Schema = SCHEMA, keep_existing: bool = False) -> None:
        self.path = Path(path)
        self.schema = schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if keep_existing and self.path.exists():
            self.rows = read_parquet(self.path).to_pylist()
        elif self.path.exists():
            self.path.unlink()

    def append(self, *rows: dict[str, Any]) -> None:
        names = self.schema.names
        for row in rows:
            missing = [c for c in names if c not in row]
            if missing:
                raise KeyError(f"row lacks columns {missing}")
            self.rows.append({c: _clean(row[c]) for c in names})
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop rows for which ``keep`` is false (resume from an earlier checkpoint)."""
        self.rows = [r for r in self.rows if keep(r)]


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file read through a single open handle.

    A by-path read opens the file twice (footer, then data); a running
    :class:`ParquetLog` may ``os.replace`` it in between, mixing two versions.
    Holding one handle pins one version (the inode stays alive after a replace).
    """
    with open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def read_rounds(path: str | Path) -> pa.Table:
    """Read one rounds.parquet, or every ``rounds.parquet`` below a directory, as one table."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("rounds.parquet"))
        if not files:
            raise FileNotFoundError(f"no rounds.parquet below {p}")
        return pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
    return read_parquet(p)

