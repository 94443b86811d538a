"""The pre-flight memory estimate: what scales it, the one-line refusal before Ray starts, and Ray failures as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

from skymask_ray.actors import out_of_memory, ray_failure
from skymask_ray.errors import ConfigError, RunError
from skymask_ray.experiment import build_config
from skymask_ray.preflight import GB, KNOBS, check_fits, estimate_memory

FMNIST = {"train_bytes": 60000 * 784 * 4 + 60000 * 8, "test_bytes": 10000 * 784 * 4 + 80000, "train_samples": 60000}
CNN_P = 139_960


def _estimate(workers: int = 2, **over):
    cfg = build_config(preset="paper-fmnist", overrides={"attack": "min_max", "defense": "skymask", **over})
    return estimate_memory(cfg, numel=CNN_P, workers=workers, **FMNIST)


@pytest.mark.parametrize("selection", ["first", "random"])
def test_a_seeded_population_costs_the_same_at_any_size(selection):
    small, huge = (_estimate(clients=n, cohort=100, malicious_selection=selection, data={"samples_per_client": 50})
                   for n in (10**5, 10**9))
    assert small.total == huge.total and small.causes["population"] < 0.01 * small.total


def test_each_term_grows_with_its_knob_and_names_it():
    base = _estimate(clients=10**5, cohort=100, data={"samples_per_client": 50})
    big_k = _estimate(clients=10**5, cohort=20_000, data={"samples_per_client": 50})
    assert big_k.total - base.total > 199 * 100 * CNN_P * 4 * 8 and big_k.dominant() == "cohort"
    table = _estimate(clients=10**8, cohort=100)  # no samples_per_client: a split of 10^8 clients
    assert table.dominant() == "split" and table.total > 40 * GB
    assert _estimate(workers=64, clients=10**5, cohort=100, data={"samples_per_client": 50}).dominant() == "workers"
    fedavg = _estimate(clients=10**5, cohort=100, defense="fedavg", data={"samples_per_client": 50})
    assert fedavg.trainer < base.trainer  # SkyMask's (K + 1) x P masks


def test_the_refusal_is_one_line_naming_the_knob(monkeypatch):
    est = _estimate(clients=10**6, cohort=10**5, data={"samples_per_client": 50})
    with pytest.raises(ConfigError) as err:
        check_fits(est, 8 * GB, "this machine")
    msg = str(err.value)
    assert "\n" not in msg and KNOBS["cohort"] in msg and "8.0 GB available on this machine" in msg
    check_fits(est, est.total, "this machine")  # exactly enough is enough
    monkeypatch.setenv("SKYMASK_MEMORY_CHECK", "0")
    check_fits(est, 8 * GB, "this machine")


def test_a_run_too_big_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """Simulation refuses after loading the data and building the model, before the split and before Ray."""
    import skymask_ray.simulation as simulation

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(simulation, "init_ray", no_ray)
    monkeypatch.setattr(simulation, "client_shards", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = build_config(overrides={"data": {"dataset": "digits", "samples_per_client": 10}, "model": "mlp",
                                  "clients": 10**7, "cohort": 2 * 10**6, "defense": "skymask"})
    with pytest.raises(ConfigError, match="lower --cohort") as err:
        simulation.Simulation(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "rounds.parquet").exists()


@pytest.mark.slow
def test_the_cli_refuses_a_population_split_too_big_in_one_line(tmp_path):
    """10^8 clients without --samples-per-client would be a split table of 10^8 index arrays."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env.pop("SKYMASK_MEMORY_CHECK", None)
    proc = subprocess.run([sys.executable, "-m", "skymask_ray.cli", "run", "--dataset", "synthetic", "--model", "mlp",
                           "--clients", "100000000", "--cohort", "100", "--rounds", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: this run needs about") and "--samples-per-client" in lines[0]


RAY_OOM = """Task was killed due to the node running low on memory.
Memory on the node (IP: 10.0.0.7, ID: 6f1c) where the task (actor ID: 8a2b, name=WorkerHost.__init__, pid=4242, memory \
used=3.10GB) was running was 22.55GB / 23.47GB (0.960783), which exceeds the memory usage threshold of 0.95. Ray \
killed this worker (ID: 91ab) because it was the most recently scheduled task; to see more information about memory \
usage on this node, use `ray logs raylet.out -ip 10.0.0.7`.
Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/en/latest/ray-core/scheduling/ray-oom-prevention.html.
"""


def test_an_out_of_memory_kill_is_one_line_with_phase_worker_and_node_memory():
    err = ray_failure(ray.exceptions.OutOfMemoryError(RAY_OOM), "set-up (client workers loading their clients)",
                      "client worker 3 on node 10.0.0.7")
    msg = str(err)
    assert isinstance(err, RunError) and "\n" not in msg
    assert msg.startswith("set-up (client workers loading their clients): client worker 3 on node 10.0.0.7, pid 4242")
    assert "killed for lack of memory (node memory 22.55GB / 23.47GB)" in msg and "--workers" in msg


def test_other_ray_failures_are_one_line_and_not_called_memory():
    dead = ray.exceptions.RayActorError(error_msg="The actor died unexpectedly before finishing this task.\n"
                                        "\tclass_name: WorkerHost\n\tpid: 77\n\tip: 10.0.0.8\nexit code 1")
    assert not out_of_memory(dead)
    msg = str(ray_failure(dead, "round 4, client training", "client worker 0"))
    assert msg == ("round 4, client training: client worker 0, pid 77, node 10.0.0.8 failed (RayActorError: "
                   "The actor died unexpectedly before finishing this task.)")
    killed = ray.exceptions.RayActorError(error_msg="The actor is dead because its worker process has died. "
                                          "Worker exit type: SYSTEM_ERROR. (possibly killed by the OOM killer)")
    assert out_of_memory(killed)
