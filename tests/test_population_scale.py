"""Seeded populations end to end: the same rows on any worker count, in process, after a resume; 10^7 clients in
bounded memory; a worker lost while loading, or the server killed mid-run, ends in one line with the rows kept."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import ray

from skymask_ray.errors import RunError
from skymask_ray.experiment import build_config
from skymask_ray.results import read_parquet

pytestmark = pytest.mark.slow

SEEDED = {"data": {"dataset": "digits", "root_size": 50, "samples_per_client": 8}, "model": "mlp",
          "clients": 100_000, "cohort": 6, "malicious_fraction": 0.3, "attack": "label_flip", "defense": "fedavg",
          "rounds": 3, "train": {"local_lr": 0.5, "batch_size": 4, "grad_clip": None}}
KEYS = ["round", "accuracy", "loss", "tp", "fp", "tn", "fn", "cohort", "malicious_in_cohort", "trained_clients"]


def _rows(path) -> list[list]:
    return [[r[k] for k in KEYS] for r in read_parquet(path).to_pylist()]


def test_seeded_clients_train_alike_on_any_worker_count_in_process_and_after_resume(ray_cluster, tmp_path):
    """Each round's cohort is dealt to the workers afresh, so a client lands on different workers across
    runs and rounds; its data (poisoned by label_flip for attackers) comes from its seed, so the rows agree."""
    from skymask_ray.simulation import Simulation, run_experiment

    one = _rows(run_experiment(build_config(overrides={**SEEDED, "workers": 1}), tmp_path / "w1"))
    two = _rows(run_experiment(build_config(overrides={**SEEDED, "workers": 2}), tmp_path / "w2"))
    with Simulation(build_config(overrides={**SEEDED, "workers": 2}), tmp_path / "local", local_clients=True) as sim:
        assert sim.shards.__class__.__name__ == "SeededShards"
        local = _rows(sim.run())
    run_experiment(build_config(overrides={**SEEDED, "workers": 2, "rounds": 1}), tmp_path / "part")
    resumed = _rows(run_experiment(build_config(overrides={**SEEDED, "workers": 1}), tmp_path / "part", resume=True))
    assert one == two == resumed
    # in process the worker trains on every core: the same data, float sums in another order (golden rows: 1e-6)
    assert np.array(local) == pytest.approx(np.array(one), rel=1e-6)
    assert sum(r[KEYS.index("malicious_in_cohort")] for r in one) > 0  # attackers trained on poisoned data


def test_ten_million_clients_run_in_bounded_memory(ray_cluster, tmp_path):
    """10^7 clients x 10 samples: 800 MB of indices as a table (in the driver, again in the object store, again
    in the workers); seeded, the driver's Python/numpy allocations stay under 64 MB through set-up and rounds."""
    from skymask_ray.simulation import Simulation

    cfg = build_config(overrides={**SEEDED, "clients": 10**7, "cohort": 8, "attack": "min_max", "rounds": 2,
                                  "workers": 2, "data": {**SEEDED["data"], "samples_per_client": 10}})
    tracemalloc.start()
    try:
        with Simulation(cfg, tmp_path / "big") as sim:
            rows = read_parquet(sim.run()).to_pylist()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, peak
    assert [r["cohort"] for r in rows] == [8, 8]
    assert max(r["mem_pss_mb"] for r in rows) < 4096  # driver + workers + server, each a torch process


def test_a_worker_lost_while_loading_is_one_line_naming_the_phase_and_the_worker(ray_cluster):
    from skymask_ray.clients.pool import ClientPool

    def dies(x, y, generator, client):
        os._exit(1)  # as the kernel's OOM killer would end it

    cfg = build_config(overrides={"data": {"dataset": "digits"}, "model": "mlp", "clients": 4})
    x = np.zeros((40, 1, 8, 8), dtype=np.float32)
    y = np.zeros(40, dtype=np.int64)
    parts = [np.arange(10 * k, 10 * k + 10) for k in range(4)]
    with pytest.raises(RunError) as err:
        ClientPool(cfg, x, y, parts, frozenset({0}), 10, 100, 1, 0.5, poison=dies, timeout_s=120)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("set-up (client workers loading their clients): client worker 0"), msg


def test_the_server_killed_mid_run_ends_in_one_line_and_keeps_the_finished_rows(ray_cluster, tmp_path):
    """An out-of-memory kill Ray reports from a remote call in round 2: one line, round 1's row kept."""
    from skymask_ray.simulation import Simulation

    from tests.test_preflight import RAY_OOM

    cfg = build_config(overrides={**SEEDED, "defense": "fltrust", "workers": 1})
    with Simulation(cfg, tmp_path / "oom") as sim:
        real = sim.server.server_update

        def killed(w, buffers, sgd, r):
            if r == 2:
                raise ray.exceptions.OutOfMemoryError(RAY_OOM.replace("WorkerHost.__init__", "MaskTrainer.server_update"))
            return real(w, buffers, sgd, r)

        sim.server.server_update = killed
        with pytest.raises(RunError) as err:
            sim.run()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("round 2: the server's mask trainer, pid 4242, node 10.0.0.7 was killed "
                                              "for lack of memory"), msg
    assert msg.endswith(f"(rounds before 2 are kept in {tmp_path / 'oom' / 'rounds.parquet'})")
    assert [r["round"] for r in read_parquet(tmp_path / "oom" / "rounds.parquet").to_pylist()] == [1]
