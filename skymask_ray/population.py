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

Nothing here is held per client: the malicious set is the first f ids or
the first f of a seeded pseudorandom permutation (O(1) either way), and a
cohort is drawn in O(K), so a population of 10^8 costs what one of 10^5 does.

Glossary: one word per meaning, in code, config and rows.

* ``malicious``: *who* is malicious. Over given rows or client ids, a
  boolean mask (``Attack.apply(updates, malicious, ctx)``,
  ``AttackContext.malicious``, ``RoundResult.malicious``, the ``malicious``
  column of ``masks.parquet``); over the whole population, a
  :class:`MaliciousSet` (``Population.malicious``,
  :func:`malicious_population`), which gives that mask for any ids
  (:meth:`MaliciousSet.mask`, :meth:`Population.is_malicious`) without
  listing the population.
* ``malicious_fraction``: the share of the population that is malicious
  (config field, row column, study key; the CLI's ``--malicious``).
* ``num_malicious``: a count of malicious clients, f in formulas:
  ``ExperimentConfig.num_malicious`` is the population's, round(N *
  malicious_fraction) (``MaliciousSet.count``); ``AttackContext.num_malicious``
  those among the round's rows. ``declared_f`` is not a count of anyone: the
  f that f-based defenses are told to assume.
* ``malicious_selection`` (first | random): which clients are malicious;
  ``malicious_sampling`` (pool | fixed): how a cohort draws them.
* ``malicious_ids``, :meth:`MaliciousSet.sorted_ids`: the attackers' ids,
  listed; :meth:`MaliciousSet.rank`, :meth:`MaliciousSet.nth_malicious`:
  their order.

Two row columns keep older names because stored rows (committed studies,
golden rows) use them: ``malicious`` is the population's count
(``num_malicious``), and ``malicious_in_cohort`` the count in the round's
cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seeding import numpy_rng


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
FEISTEL_ROUNDS = 6


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): a fast keyed-hash round function."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class SeededPermutation:
    """A pseudorandom permutation of 0 .. N-1 from a seed, evaluated per element in O(1) time and memory.

    A balanced Feistel network (``FEISTEL_ROUNDS`` rounds of a keyed splitmix64 mix) permutes the
    smallest even-bit domain 2^(2h) >= N (at most 4N); values that land at N or above are permuted
    again (cycle walking) until they fall below N, which keeps the map a bijection on 0 .. N-1.
    Nothing of size N is ever built, so a population of 10^8 holds 6 integers.
    """

    size: int
    keys: tuple[int, ...]

    @classmethod
    def of(cls, n: int, seed: int, *path: object) -> "SeededPermutation":
        keys = numpy_rng(seed, *path).integers(0, 2**63, size=FEISTEL_ROUNDS)
        return cls(n, tuple(int(k) for k in keys))

    @property
    def half(self) -> int:
        return max(1, (max(1, self.size - 1).bit_length() + 1) // 2)

    def _rounds(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        half = np.uint64(self.half)
        low = np.uint64((1 << self.half) - 1)
        left, right = x >> half, x & low
        keys = [np.uint64(k) for k in self.keys]
        for key in reversed(keys) if inverse else keys:
            if inverse:
                left, right = right ^ (_mix(left ^ key) & low), left
            else:
                left, right = right, left ^ (_mix(right ^ key) & low)
        return (left << half) | right

    def _walk(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        out = self._rounds(np.asarray(x, dtype=np.uint64).copy(), inverse)
        n = np.uint64(self.size)
        over = out >= n
        while over.any():
            out[over] = self._rounds(out[over], inverse)
            over = out >= n
        return out.astype(np.int64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """pi(x) for ids 0 <= x < N."""
        return self._walk(x, inverse=False)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """pi^-1(y) for positions 0 <= y < N."""
        return self._walk(y, inverse=True)


@dataclass(frozen=True, eq=False)
class MaliciousSet:
    """Which of the N clients are malicious, in O(1) memory whatever N.

    ``order`` None: the first ``count`` clients. Otherwise a seeded random set: the clients whose
    position pi(k) under a :class:`SeededPermutation` is below ``count``. It answers membership for
    a cohort, an attacker's rank among the attackers (its id, or its position pi(k)), and the j-th
    attacker or the j-th benign client in that order (what a ``fixed`` cohort draws), never by listing
    the population.
    """

    size: int  # N
    count: int  # f
    order: SeededPermutation | None = None  # None: clients 0 .. f-1

    def _position(self, clients: np.ndarray) -> np.ndarray:
        c = np.asarray(clients, dtype=np.int64)
        return c if self.order is None else self.order(c)

    def mask(self, clients: np.ndarray) -> np.ndarray:
        """(len(clients),) bool: which of ``clients`` are malicious."""
        return self._position(clients) < self.count

    def __contains__(self, k: object) -> bool:
        return isinstance(k, (int, np.integer)) and 0 <= int(k) < self.size and bool(self.mask(np.array([k]))[0])

    def rank(self, k: int) -> int | None:
        """Client k's rank among the attackers, 0 .. f-1 (its id for the first f; None: k is benign)."""
        if k not in self:
            return None
        return int(self._position(np.array([k]))[0])

    def sorted_ids(self) -> np.ndarray:
        """Every attacker's id, in increasing order (O(f): a listing, for small populations and reports)."""
        return np.sort(self.nth_malicious(np.arange(self.count, dtype=np.int64)))

    def nth_malicious(self, j: np.ndarray) -> np.ndarray:
        """The attackers of rank ``j``."""
        j = np.asarray(j, dtype=np.int64)
        return j if self.order is None else self.order.inverse(j)

    def nth_benign(self, j: np.ndarray) -> np.ndarray:
        """The ``j``-th benign clients (in id order for the first f, in permutation order otherwise)."""
        j = np.asarray(j, dtype=np.int64) + self.count
        return j if self.order is None else self.order.inverse(j)


def malicious_population(n: int, f: int, selection: str, seed: int) -> MaliciousSet:
    """The first f clients, or a seeded random set of f (``selection``: first | random).

    The first f are as random as any f where the split permutes the clients (a materialised split
    does; seeded clients are exchangeable), and their ids then say who the attackers are. The
    random set is the f clients a seeded pseudorandom permutation of the population puts first
    (stream (seed, "malicious")): exactly f attackers, uniform over the population, O(1) memory.
    """
    if selection == "first":
        return MaliciousSet(n, f)
    return MaliciousSet(n, f, SeededPermutation.of(n, seed, "malicious"))


@dataclass(frozen=True)
class Population:
    """The population's malicious set and the per-round sampling rules."""

    malicious: MaliciousSet
    cohort_size: int  # K
    sampling: str  # pool | fixed
    malicious_fraction: float
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
        num_malicious = self.malicious.count
        in_cohort = min(int(round(k * self.malicious_fraction)), num_malicious)
        picked = np.concatenate([
            self.malicious.nth_malicious(rng.choice(num_malicious, size=in_cohort, replace=False)),
            self.malicious.nth_benign(rng.choice(n - num_malicious, size=k - in_cohort, replace=False))])
        return np.sort(picked)

    def dropped(self, cohort: np.ndarray, round_idx: int) -> np.ndarray:
        """(len(cohort),) bool: which sampled clients fail to report this round."""
        if self.dropout <= 0.0:
            return np.zeros(len(cohort), dtype=bool)
        return numpy_rng(self.seed, "dropout", round_idx).random(len(cohort)) < self.dropout
