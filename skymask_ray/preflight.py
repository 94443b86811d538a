"""A run's peak memory, estimated before Ray starts, and a one-line refusal when it cannot fit.

The estimate follows where memory goes in a run (SPEC section 2's data flow):

* every process (driver, client workers, the server's trainer) pays a
  Python + torch + Ray core-worker baseline, and Ray's daemons one more;
* the training set lives once in the object store (workers read it
  zero-copy); the driver also holds it and the test set;
* the population: a materialised split holds every client's index array
  (driver, and once more in the object store for the workers); seeded
  clients hold the pool grouped by label, whatever N; the malicious set
  nothing (the first f, or a seeded permutation's first f);
* the cohort: K x P float32 updates, a few copies in the driver (trained,
  stacked, attacked, defended), the workers' results in the object store,
  and SkyMask's trainer (K + 1) x P updates and masks.

Each term is attributed to the knob that scales it, so a refusal names
the one to turn. The constants are estimates, calibrated against
``python -m benchmarks.population`` (which prints the estimate beside the
measured memory). ``SKYMASK_MEMORY_CHECK=0`` runs anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .config import ExperimentConfig
from .data.shards import seeded
from .errors import ConfigError
from .skymask.masked import BYTES_PER_ENTRY

MB = 1024**2
GB = 1024**3
PROCESS_BYTES = 400 * MB  # one Python process with torch and a Ray core worker (PSS, libraries shared)
RAY_DAEMON_BYTES = 400 * MB  # GCS, raylet, the object store's own bookkeeping
TABLE_CLIENT_BYTES = 250  # per client of a materialised split: its array's header, dict entry and pickle
DRIVER_COHORT_COPIES = 4  # K x P copies in the driver: trained, stacked, attacked, the defense's
WORKER_COHORT_COPIES = 2  # K x P copies in the workers: their results as tensors and as numpy
TRAINER_INPUT_COPIES = 1  # (K + 1) x P stacked updates the trainer receives, beside its masks

KNOBS = {
    "cohort": "lower --cohort",
    "population": "lower --clients",
    "split": "set --samples-per-client (clients then draw their samples from their own seeds)",
    "workers": "lower --workers",
    "data": "use a smaller dataset",
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of a run in bytes: by process (where it lives) and by cause (what scales it)."""

    driver: int
    workers: int  # all client workers together
    trainer: int
    object_store: int
    daemons: int
    causes: dict[str, int] = field(default_factory=dict)  # a KNOBS key -> bytes

    @property
    def total(self) -> int:
        return self.driver + self.workers + self.trainer + self.object_store + self.daemons

    def dominant(self) -> str:
        """The cause (a :data:`KNOBS` key) that holds the most memory."""
        return max(self.causes, key=lambda k: self.causes[k])

    def summary(self) -> str:
        """``X GB (driver a, workers b, trainer c, object store d, Ray e)``."""
        parts = [("driver", self.driver), ("workers", self.workers), ("trainer", self.trainer),
                 ("object store", self.object_store), ("Ray", self.daemons)]
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{n} {b / GB:.1f}" for n, b in parts) + ")"


def planned_workers(cfg: ExperimentConfig, clients: int, cpus: int | None = None) -> int:
    """Client workers a run will start: ``workers``, else one per CPU (``cpus``, else this machine's), at most
    ``clients`` (the clients it may train at once)."""
    return max(1, min(cfg.workers or cpus or os.cpu_count() or 1, clients))


def estimate_memory(cfg: ExperimentConfig, train_bytes: int, test_bytes: int, train_samples: int, numel: int,
                    workers: int) -> MemoryEstimate:
    """The run's peak memory from N, K, P, S, the defense and the dataset's sizes (bytes of the training and
    test sets, the number of training samples), with ``workers`` client workers."""
    n, k = cfg.clients, cfg.cohort_size
    pool = max(0, train_samples - cfg.data.root_size)
    kp = k * numel * 4
    per_sample = train_bytes / max(1, train_samples)
    if seeded(n, cfg.data, pool):
        table = 8 * pool  # the pool grouped by label, shared by every worker
        split = 0
        cache = 0  # a seeded client's samples are not kept between rounds
    else:
        s = cfg.data.samples_per_client
        held = pool if s is None else min(pool, n * s)
        table = 8 * held
        split = TABLE_CLIENT_BYTES * n
        cache = int(held * per_sample)  # workers keep their clients' samples, together at most the pool
    skymask = cfg.defense == "skymask"
    trainer_kp = (k + 1) * numel * (BYTES_PER_ENTRY + 4 * TRAINER_INPUT_COPIES) if skymask else 0

    driver = PROCESS_BYTES + train_bytes + test_bytes + table + split + DRIVER_COHORT_COPIES * kp
    worker_mem = workers * PROCESS_BYTES + cache + WORKER_COHORT_COPIES * kp
    trainer = PROCESS_BYTES + trainer_kp
    store = train_bytes + table + split + kp + ((k + 1) * numel * 4 if skymask else 0)
    causes = {
        "cohort": DRIVER_COHORT_COPIES * kp + WORKER_COHORT_COPIES * kp + trainer_kp + kp
        + ((k + 1) * numel * 4 if skymask else 0),
        "split": 2 * split,
        "population": 2 * table,
        "workers": workers * PROCESS_BYTES,
        "data": 2 * train_bytes + test_bytes + cache,
    }
    return MemoryEstimate(driver, worker_mem, trainer, store, RAY_DAEMON_BYTES, causes)


def check_fits(estimate: MemoryEstimate, available: int, where: str) -> None:
    """Refuse in one line (a :class:`ConfigError`) when ``estimate`` exceeds ``available`` bytes on ``where``."""
    if estimate.total <= available or os.environ.get("SKYMASK_MEMORY_CHECK", "1") == "0":
        return
    cause = estimate.dominant()
    raise ConfigError(f"this run needs about {estimate.summary()}, more than the {available / GB:.1f} GB "
                      f"available on {where}; {KNOBS[cause]} ({cause}: {estimate.causes[cause] / GB:.1f} GB; "
                      "SKYMASK_MEMORY_CHECK=0 runs anyway)")
