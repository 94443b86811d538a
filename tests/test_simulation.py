"""End-to-end runs on the session's multi-node Ray cluster (small data, a few rounds)."""

from __future__ import annotations

import json

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from skymask_ray.config import save_config
from skymask_ray.experiment import build_config
from skymask_ray.results import COLUMNS, read_parquet
from skymask_ray.simulation import Simulation, run_experiment
from skymask_ray.skymask.masked import GRAM_KERNELS

pytestmark = pytest.mark.slow

BASE = {
    "data": {"dataset": "digits", "root_size": 50},
    "model": "mlp",
    "clients": 20,
    "malicious_fraction": 0.3,
    "workers": 2,
    "train": {"local_lr": 0.5, "batch_size": 16, "grad_clip": None, "local_epochs": 2},
}


def _cfg(**kw):
    ov = {**BASE, **kw}
    return build_config(overrides=ov)


def test_skymask_run_rows_detection_and_placement(ray_cluster, tmp_path):
    _, gpu_node = ray_cluster
    cfg = _cfg(attack="min_max", defense="skymask", rounds=3)
    with Simulation(cfg, tmp_path) as sim:
        trainer_node = ray.get(sim.server.trainer.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
        worker_nodes = set(ray.get([w.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                                    for w in sim.clients.workers]))
        assert sim.layout.gpu and sim.layout.trainer_bundle.get("GPU") == 1.0
        sim.run()
    assert trainer_node == gpu_node  # the mask trainer asked for (and got) the GPU node
    assert len(worker_nodes) == 2  # SPREAD: client workers on different nodes
    rows = pq.read_table(tmp_path / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert set(COLUMNS) <= set(rows[0])
    f = cfg.num_malicious
    for r in rows:
        assert r["tp"] + r["fn"] == f and r["fp"] + r["tn"] == cfg.clients - f
        assert r["accepted"] == r["tn"] + r["fn"]
        assert r["trained_clients"] == cfg.clients - f  # model poisoners skip local training
        assert 0.0 <= r["accuracy"] <= 1.0 and r["t_round"] > 0 and r["peak_rss_mb"] > 100
        assert r["single_component"] is False  # the paper's gmm2 always splits (None would mean: not recorded)
    assert np.mean([r["tpr"] for r in rows]) == 1.0  # min_max's identical vectors are all caught
    assert np.mean([r["fpr"] for r in rows]) <= 0.2
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    masks = pq.read_table(tmp_path / "_masks.parquet").to_pylist()
    assert len(masks) == 3 * (cfg.clients + 1) and sum(m["is_server"] for m in masks) == 3
    assert (tmp_path / "_config.yaml").exists()
    kernels = json.loads((tmp_path / "_state" / "layout.json").read_text())["kernels"]
    assert kernels["client_training"] == "sequential"  # CPU workers (the fake GPU has no CUDA)
    assert kernels["mask_step"].startswith("mask_step=eager") and "too few to compile" in kernels["mask_step"]
    assert kernels["gram"].split(" ")[0] in {f"gram={k}" for k in GRAM_KERNELS}


def test_min_max_breaks_fedavg_but_not_fltrust(ray_cluster, tmp_path):
    accs = {}
    for attack, defense in (("none", "fedavg"), ("min_max", "fedavg"), ("min_max", "fltrust")):
        path = run_experiment(_cfg(attack=attack, defense=defense, rounds=4, malicious_fraction=0.4),
                              tmp_path / f"{attack}-{defense}")
        accs[attack, defense] = pq.read_table(path).column("accuracy").to_pylist()[-1]
        assert set(pq.read_table(path).column("single_component").to_pylist()) == {None}  # skymask's alone
    assert accs["none", "fedavg"] > 0.6
    assert accs["min_max", "fedavg"] < 0.2  # chance is 0.1
    assert accs["min_max", "fltrust"] > accs["min_max", "fedavg"] + 0.2


def test_worker_killed_mid_round_is_restarted_and_work_redone(ray_cluster, tmp_path):
    cfg = _cfg(attack="none", defense="fedavg", rounds=1, clients=16)
    with Simulation(cfg, tmp_path) as sim:
        ids = list(range(cfg.clients))
        clean = sim.clients.train(sim.weights, sim.buffers, 1, ids).updates
        victim = sim.clients.workers[0]
        killer = threading.Timer(0.3, lambda: ray.kill(victim, no_restart=False))
        killer.start()
        faulty = sim.clients.train(sim.weights, sim.buffers, 1, ids).updates
        killer.join()
        pid_after = ray.get(victim.pid.remote())
    assert pid_after > 0
    assert torch.equal(clean, faulty)


def test_resume_gives_the_same_rows(ray_cluster, tmp_path):
    cfg = _cfg(attack="lie", defense="skymask", rounds=4)
    full = pq.read_table(run_experiment(cfg, tmp_path / "full")).to_pylist()
    run_experiment(_cfg(attack="lie", defense="skymask", rounds=2), tmp_path / "part")  # then raise rounds to 4
    resumed = pq.read_table(run_experiment(cfg, tmp_path / "part", resume=True)).to_pylist()
    keys = ["round", "accuracy", "loss", "tp", "fp", "tn", "fn", "accepted"]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


def test_killed_run_keeps_finished_rounds(tmp_path):
    """SIGKILL a CLI run half way: rounds.parquet stays readable with every finished round."""
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "skymask_ray.cli", "run", "--dataset", "digits", "--model", "mlp",
           "--clients", "10", "--rounds", "200", "--defense", "fedavg", "--root-size", "30", "--workers", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        rows = 0
        while time.time() < deadline and rows < 3:
            time.sleep(0.5)
            if (out / "rounds.parquet").exists():
                rows = read_parquet(out / "rounds.parquet").num_rows
        assert rows >= 3, "the run did not get going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    table = read_parquet(out / "rounds.parquet")
    rounds = table.column("round").to_pylist()
    assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) >= 3


def test_multi_node_run_equals_single_node_run(ray_cluster, tmp_path):
    """Same seed, same rows: on the 3-node cluster (3 workers spread) and on a fresh 1-node local Ray."""
    cfg = build_config(overrides={**BASE, "clients": 12, "rounds": 2, "malicious_fraction": 0.25, "attack": "lie",
                                  "defense": "skymask", "workers": 3})
    save_config(cfg, tmp_path / "cfg.yaml")
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "skymask_ray.cli", "run", "--config", str(tmp_path / "cfg.yaml"),
                    "--workers", "1", "--out", str(single)],
                   env={**os.environ, "RAY_ADDRESS": ""}, check=True, capture_output=True, timeout=600)
    multi = run_experiment(cfg, tmp_path / "multi")
    keys = ["round", "accuracy", "loss", "tp", "fp", "tn", "fn"]
    a = pq.read_table(single / "rounds.parquet").to_pylist()
    b = pq.read_table(multi).to_pylist()
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


class _NaNAttack:
    """Driver-side stand-in: poisons two rows with NaN/Inf (an attack or a diverged client)."""

    trains = True
    target = None
    has_trigger = False
    needs_server_update = False

    def begin_round(self, round_idx, global_weights):
        pass

    def apply(self, updates, malicious, ctx):
        out = updates.clone()
        out[0, 5] = float("nan")
        out[1, 0] = float("inf")
        return out


def test_non_finite_updates_are_rejected_and_recorded(ray_cluster, tmp_path):
    cfg = _cfg(attack="none", defense="fedavg", rounds=2)
    with Simulation(cfg, tmp_path) as sim:
        sim.attack = _NaNAttack()
        rows = [sim.run_round(1).row.as_dict(), sim.run_round(2).row.as_dict()]
        assert torch.isfinite(sim.weights).all()
    for r in rows:
        assert r["invalid"] == 2 and r["accepted"] == cfg.clients - 2
        assert r["tp"] + r["fp"] == 2  # the two invalid clients count as rejected
        assert np.isfinite(r["loss"])


ATTACK_FRACTIONS = [(name, (0.2, 0.5, 0.8)[i % 3]) for i, name in enumerate(sorted(
    ["none", "label_flip", "scaling", "lie_backdoor", "lie", "min_max", "min_sum", "fang_trim", "fang_krum",
     "sign_flip", "ipm", "gaussian", "layer", "parameter", "adaptive", "poisonedfl", "dba", "neurotoxin",
     "skymask_adaptive"]))]


@pytest.mark.parametrize("attack,fraction", ATTACK_FRACTIONS)
def test_every_attack_runs_end_to_end(ray_cluster, tmp_path, attack, fraction):
    """Each attack through the whole round loop (each of 0.2/0.5/0.8 by five attacks end to end; the
    attack unit tests run every attack at 0.2, 0.5, 0.8 and 0.95): N rows reach the defense, model
    poisoners skip training, and the row is complete."""
    from skymask_ray.attacks import ATTACKS

    params = {"adaptive": {"search_steps": 1}, "layer": {"base": "min_max", "layers": ["last"]},
              "parameter": {"base": "lie", "fraction": 0.2},
              "dba": {"pattern": "square"}}.get(attack, {})  # digits are 8x8: DBA's bars do not fit
    cfg = _cfg(attack=attack, attack_params=params, defense="fedavg", rounds=1, clients=10,
               malicious_fraction=fraction, skymask={"mask_epochs": 3})
    (row,) = pq.read_table(run_experiment(cfg, tmp_path)).to_pylist()
    f = cfg.num_malicious
    assert f == round(10 * fraction) or attack == "none"
    instance = ATTACKS.get(attack)(params, cfg, 10)
    assert row["trained_clients"] == (10 if instance.trains else 10 - f)
    assert row["accepted"] == 10 and row["invalid"] == 0  # fedavg saw all N updates
    assert 0.0 <= row["accuracy"] <= 1.0
    assert (row["backdoor_success"] is not None) == instance.has_trigger
