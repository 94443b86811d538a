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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seeding import numpy_rng


def malicious_population(n: int, f: int, selection: str, seed: int) -> np.ndarray:
    """(N,) bool: the first f clients (after the split's seeded permutation) or a seeded random set."""
    mal = np.zeros(n, dtype=bool)
    if selection == "first":
        mal[:f] = True
    else:
        mal[numpy_rng(seed, "malicious").choice(n, size=f, replace=False)] = True
    return mal


@dataclass(frozen=True)
class Population:
    """The population's malicious set and the per-round sampling rules."""

    malicious: np.ndarray  # (N,) bool
    cohort_size: int  # K
    sampling: str  # pool | fixed
    fraction: float
    dropout: float
    seed: int

    @property
    def size(self) -> int:
        return len(self.malicious)

    @property
    def full(self) -> bool:
        return self.cohort_size >= self.size

    def cohort(self, round_idx: int) -> np.ndarray:
        """Sorted ids of the K clients sampled in ``round_idx`` (all clients, in order, when K = N)."""
        n, k = self.size, self.cohort_size
        if k >= n:
            return np.arange(n)
        rng = numpy_rng(self.seed, "cohort", round_idx)
        if self.sampling == "pool":
            return np.sort(rng.choice(n, size=k, replace=False))
        bad, good = np.flatnonzero(self.malicious), np.flatnonzero(~self.malicious)
        f = min(int(round(k * self.fraction)), len(bad))
        picked = np.concatenate([rng.choice(bad, size=f, replace=False), rng.choice(good, size=k - f, replace=False)])
        return np.sort(picked)

    def dropped(self, cohort: np.ndarray, round_idx: int) -> np.ndarray:
        """(len(cohort),) bool: which sampled clients fail to report this round."""
        if self.dropout <= 0.0:
            return np.zeros(len(cohort), dtype=bool)
        return numpy_rng(self.seed, "dropout", round_idx).random(len(cohort)) < self.dropout
