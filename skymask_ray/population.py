"""Cross-device populations: who is malicious, who is sampled each round, who fails to report.

``clients`` (N) is the population; each round a cohort of K distinct clients
is drawn from the stream (seed, "cohort", round), so the draw does not depend
on the worker count or on where a run was resumed. K = N is full
participation: every client in every round, in client order, and no random
number is drawn (rows are those of a run without sampling).

Attackers under sampling:

* ``pool``: round(N * fraction) malicious clients live in the population
  (chosen once, as ``malicious_selection`` says); a uniform cohort draws
  them at random, so the number in a cohort varies by round (its mean is
  K * fraction).
* ``fixed``: every cohort holds exactly round(K * fraction) attackers drawn
  from the malicious population, and K - that many benign clients (the
  paper's setting, where the defense's f is the truth).

Dropouts: each sampled client fails to report with probability ``dropout``,
drawn from (seed, "dropout", round); attackers drop out too.

Nothing here is held per client: the malicious set is the first f ids (O(1))
or the sorted ids of a seeded random set (O(f)), and a cohort is drawn in
O(K), so a population of 10^8 costs what one of 10^5 does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seeding import numpy_rng


@dataclass(frozen=True, eq=False)
class MaliciousSet:
    """Which of the N clients are malicious, held in O(attackers) memory (O(1) for the first f).

    ``ids`` is the sorted attacker ids of a seeded random set, None for the first ``count`` clients
    (then nothing per client is stored, whatever N). It answers membership for a cohort, an
    attacker's rank among the attackers, and the j-th attacker or the j-th benign client in id
    order (what a ``fixed`` cohort draws), never by listing the population.
    """

    size: int  # N
    count: int  # f
    ids: np.ndarray | None = None  # (f,) sorted int64; None: clients 0 .. f-1

    def mask(self, clients: np.ndarray) -> np.ndarray:
        """(len(clients),) bool: which of ``clients`` are malicious."""
        c = np.asarray(clients, dtype=np.int64)
        if self.ids is None:
            return c < self.count
        if not len(self.ids):
            return np.zeros(c.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.ids, c), len(self.ids) - 1)
        return self.ids[pos] == c

    def __contains__(self, k: object) -> bool:
        return isinstance(k, (int, np.integer)) and bool(self.mask(np.array([k]))[0])

    def rank(self, k: int) -> int | None:
        """Client k's position among the attackers in increasing id order (None: k is benign)."""
        if k not in self:
            return None
        return int(k) if self.ids is None else int(np.searchsorted(self.ids, k))

    def sorted_ids(self) -> np.ndarray:
        """Every attacker's id, in increasing order (O(f): a listing, for small populations and reports)."""
        return np.arange(self.count, dtype=np.int64) if self.ids is None else self.ids

    def nth_malicious(self, j: np.ndarray) -> np.ndarray:
        """The ``j``-th attackers in id order."""
        j = np.asarray(j, dtype=np.int64)
        return j if self.ids is None else self.ids[j]

    def nth_benign(self, j: np.ndarray) -> np.ndarray:
        """The ``j``-th benign clients in id order: j plus the attackers at or below that position."""
        j = np.asarray(j, dtype=np.int64)
        if self.ids is None:
            return j + self.count
        below = self.ids - np.arange(len(self.ids))  # benign clients with a smaller id than each attacker
        return j + np.searchsorted(below, j, side="right")


def malicious_population(n: int, f: int, selection: str, seed: int) -> MaliciousSet:
    """The first f clients, or a seeded random set of f (``selection``: first | random).

    The first f are as random as any f: a materialised split permutes the clients, and seeded
    clients (:class:`~skymask_ray.data.shards.SeededShards`) are exchangeable. The random set is
    numpy's draw without replacement on the stream (seed, "malicious"); above N/50 attackers it
    shuffles an N-long range once while drawing, then keeps only the f ids.
    """
    if selection == "first":
        return MaliciousSet(n, f)
    ids = np.sort(numpy_rng(seed, "malicious").choice(n, size=f, replace=False)).astype(np.int64)
    return MaliciousSet(n, f, ids)


@dataclass(frozen=True)
class Population:
    """The population's malicious set and the per-round sampling rules."""

    malicious: MaliciousSet
    cohort_size: int  # K
    sampling: str  # pool | fixed
    fraction: float
    dropout: float
    seed: int

    @property
    def size(self) -> int:
        return self.malicious.size

    @property
    def full(self) -> bool:
        return self.cohort_size >= self.size

    def is_malicious(self, clients: np.ndarray) -> np.ndarray:
        """(len(clients),) bool ground truth for the given client ids."""
        return self.malicious.mask(clients)

    def cohort(self, round_idx: int) -> np.ndarray:
        """Sorted ids of the K clients sampled in ``round_idx`` (all clients, in order, when K = N).

        O(K) time and memory for K much smaller than N (numpy draws a small sample without
        replacement by Floyd's method), so a cohort from 10^8 costs what one from 10^5 does.
        """
        n, k = self.size, self.cohort_size
        if k >= n:
            return np.arange(n)
        rng = numpy_rng(self.seed, "cohort", round_idx)
        if self.sampling == "pool":
            return np.sort(rng.choice(n, size=k, replace=False))
        bad = self.malicious.count
        f = min(int(round(k * self.fraction)), bad)
        picked = np.concatenate([self.malicious.nth_malicious(rng.choice(bad, size=f, replace=False)),
                                 self.malicious.nth_benign(rng.choice(n - bad, size=k - f, replace=False))])
        return np.sort(picked)

    def dropped(self, cohort: np.ndarray, round_idx: int) -> np.ndarray:
        """(len(cohort),) bool: which sampled clients fail to report this round."""
        if self.dropout <= 0.0:
            return np.zeros(len(cohort), dtype=bool)
        return numpy_rng(self.seed, "dropout", round_idx).random(len(cohort)) < self.dropout
