"""Where a client's sample indices come from: a table built at set-up, or the client's own seed.

* :class:`ShardTable`: every client's indices, split at set-up by
  :func:`~skymask_ray.data.partition.split_clients` (each sample with one
  client). Used where N x S fits the training set without replacement (the
  paper's presets, every full-participation study), so their rows do not
  change; it costs at most the training set's size in indices.
* :class:`SeededShards`: a cross-device population, N x S more than the
  training set. Client k is what its seed says: its label mix and its S
  sample indices are drawn from the stream (run seed, "client-data", k), on
  whichever worker trains it, when it is sampled. O(S) time and memory per
  client, O(training set) for the whole population, whatever N; the same
  client gets the same samples on any worker, in any round, after a resume.

The label law of a seeded client follows the configured partition (pfl-research's
artificial users are built the same way, from indices into shared data):

* ``iid``: S indices uniform over the clients' pool;
* ``bias`` (the paper's split): the client's group g is uniform over the C
  labels; each sample has label g with probability b, else one of the other
  C - 1 labels uniformly (b = 1/C is IID);
* ``dirichlet(alpha)``: the client's label mix p ~ Dirichlet(alpha 1_C);
  each sample's label ~ p.

A sample of label c is then uniform among the pool's samples of label c (a
label the pool lacks draws from the whole pool). Samples are drawn with
replacement, within and across clients. ``subject`` cannot draw.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError
from ..seeding import numpy_rng
from .partition import split_clients

SEEDED_PARTITIONS = ("bias", "dirichlet", "iid")


class ClientShards(Protocol):
    """What a client worker asks of a population's data: client k's sample indices."""

    def indices(self, k: int) -> np.ndarray: ...

    @property
    def total(self) -> int: ...  # sample indices over every client this object answers for

    def median_size(self) -> int: ...

    def first(self) -> int | None: ...  # a client with samples (a worker's warm-up), None if none


@dataclass(frozen=True, eq=False)
class ShardTable:
    """Materialised shards: client id -> its sorted sample indices (all N, or one worker's share)."""

    parts: dict[int, np.ndarray]

    @classmethod
    def of(cls, parts: Sequence[np.ndarray]) -> "ShardTable":
        """Clients 0 .. len(parts)-1 holding ``parts``."""
        return cls(dict(enumerate(parts)))

    def indices(self, k: int) -> np.ndarray:
        return self.parts[k]

    def sizes(self) -> list[int]:
        """Sample counts in client-id order."""
        return [len(self.parts[k]) for k in sorted(self.parts)]

    @property
    def total(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def median_size(self) -> int:
        return statistics.median_low(self.sizes()) if self.parts else 0

    def first(self) -> int | None:
        return next((k for k in sorted(self.parts) if len(self.parts[k])), None)

    def subset(self, clients: Sequence[int]) -> "ShardTable":
        """The shards of ``clients`` only (what a worker holding them needs)."""
        return ShardTable({k: self.parts[k] for k in clients})


@dataclass(frozen=True, eq=False)
class SeededShards:
    """A population of ``population`` clients of ``per_client`` samples each, drawn per client from its seed.

    Holds the clients' pool grouped by label (``by_label``, ``starts``): O(training set), never O(N).
    """

    seed: int
    population: int  # N
    per_client: int  # S
    partition: str  # bias | dirichlet | iid
    bias: float
    alpha: float
    by_label: np.ndarray  # the pool's indices, grouped by label
    starts: np.ndarray  # (C + 1,) where each label's group starts in by_label

    @classmethod
    def build(cls, labels: np.ndarray, idx: np.ndarray, n_clients: int, per_client: int, cfg: DataConfig,
              num_classes: int, seed: int) -> "SeededShards":
        """Seeded clients over the pool ``idx`` (the training set less the root set)."""
        if cfg.partition not in SEEDED_PARTITIONS:
            raise ConfigError(f"partition {cfg.partition!r} cannot draw samples_per_client with replacement; "
                              f"use {', '.join(SEEDED_PARTITIONS)}")
        y = labels[idx]
        order = np.argsort(y, kind="stable")
        counts = np.bincount(y, minlength=num_classes)[:num_classes]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(seed, n_clients, per_client, cfg.partition, cfg.bias, cfg.alpha,
                   np.ascontiguousarray(idx[order], dtype=np.int64), starts)

    @property
    def num_classes(self) -> int:
        return len(self.starts) - 1

    def labels_of(self, k: int, rng: np.random.Generator) -> np.ndarray | None:
        """Client k's S sample labels by the partition's law (None for iid: no label is chosen)."""
        c, s = self.num_classes, self.per_client
        if self.partition == "iid":
            return None
        if self.partition == "bias":
            group = int(rng.integers(c))
            if c == 1:
                return np.zeros(s, dtype=np.int64)
            own = rng.random(s) < self.bias
            other = (group + 1 + rng.integers(c - 1, size=s)) % c
            return np.where(own, group, other)
        mix = np.cumsum(rng.dirichlet(np.full(c, self.alpha)))
        return np.minimum(np.searchsorted(mix, rng.random(s), side="right"), c - 1)

    def indices(self, k: int) -> np.ndarray:
        """Client k's S sorted sample indices: O(S), from the stream (seed, "client-data", k) alone."""
        if not 0 <= k < self.population:
            raise IndexError(f"client {k} is not in a population of {self.population}")
        rng = numpy_rng(self.seed, "client-data", int(k))
        y = self.labels_of(k, rng)
        if y is None:
            lo, hi = np.zeros(self.per_client, dtype=np.int64), np.full(self.per_client, len(self.by_label))
        else:
            lo, hi = self.starts[y], self.starts[y + 1]
            lacking = lo == hi  # a label the pool lacks: any sample
            lo, hi = np.where(lacking, 0, lo), np.where(lacking, len(self.by_label), hi)
        return np.sort(self.by_label[rng.integers(lo, hi)])

    @property
    def total(self) -> int:
        return self.population * self.per_client

    def median_size(self) -> int:
        return self.per_client

    def first(self) -> int | None:
        return 0 if self.population and self.per_client else None


def seeded(n_clients: int, cfg: DataConfig, pool_size: int) -> bool:
    """Are the clients seeded (N x S more than the pool) rather than a materialised split?"""
    return cfg.samples_per_client is not None and n_clients * cfg.samples_per_client > pool_size


def client_shards(labels: np.ndarray, idx: np.ndarray, n_clients: int, cfg: DataConfig, num_classes: int,
                  rng: np.random.Generator, seed: int, groups: np.ndarray | None = None) -> ShardTable | SeededShards:
    """The population's shards: seeded when N x S exceeds the pool ``idx``, else the split table
    (drawn from ``rng``, the (seed, "partition") stream after the root set, as it always was)."""
    if seeded(n_clients, cfg, len(idx)):
        return SeededShards.build(labels, idx, n_clients, cfg.samples_per_client, cfg, num_classes, seed)
    return ShardTable.of(split_clients(labels, idx, n_clients, cfg, num_classes, rng, groups))
