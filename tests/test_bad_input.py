"""Bad input and hostile results folders, run as a user runs them: the ``skymask-ray`` command in a subprocess.

Every case must end with exit code 2, exactly one line on stderr, no
traceback, and earlier results intact byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from skymask_ray.config import config_hash
from skymask_ray.experiment import build_config

pytestmark = pytest.mark.slow

TINY = ["--dataset", "synthetic", "--model", "mlp", "--clients", "10", "--rounds", "1", "--workers", "2"]
TINY_CFG = {"data": {"dataset": "synthetic"}, "model": "mlp", "clients": 10, "rounds": 1, "workers": 2}
MARKER = "pwned"


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "skymask_ray.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert not [line for line in err if " E " in line and "core_worker" in line], proc.stderr[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


class Evil:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One real skymask run (1 round) whose folder the cases below must leave untouched."""
    out = tmp_path_factory.mktemp("runs") / "done"
    proc = cli("run", *TINY, "--attack", "min_max", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "core_worker" not in proc.stderr  # no Ray ERROR line on a healthy run
    return out


def _yaml(tmp: Path, name: str, text: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def test_bad_values_files_and_folders_give_one_line(finished_run, tmp_path):
    """The table of issue 14 item 6, each against the finished run's folder where an --out is involved."""
    before = digest(finished_run)
    done = str(finished_run)
    a_file = _yaml(tmp_path, "a-file.txt", "x")
    cases = [
        (["run", *TINY, "--out", done], ["already holds results", "--resume", "--overwrite"]),
        (["run", *TINY, "--local-lr", "inf", "--out", done], ["local_lr"]),
        (["run", *TINY, "--global-lr", "inf", "--out", done], ["global_lr"]),
        (["run", *TINY, "--local-lr", "nan", "--out", done], ["local_lr"]),
        (["run", *TINY, "--malicious", "0.999", "--attack", "min_max", "--out", done], ["benign"]),
        (["run", *TINY, "--device", "cuda", "--out", str(tmp_path / "c")], ["cuda"]),
        (["run", *TINY, "--out", a_file], ["not a folder"]),
        (["run", *TINY, "--out", a_file + "/sub"], ["not a folder"]),
        (["run", *TINY, "--resume", "--defense", "fedavg", "--out", done], ["another config", "--overwrite"]),
        (["run", *TINY, "--resume", "--overwrite", "--out", done], ["--resume", "--overwrite"]),
        (["run", "--config", _yaml(tmp_path, "m.yaml", "model: [mlp]\n"), "--out", done], ["model"]),
        (["run", "--config", _yaml(tmp_path, "ap.yaml", "attack_params: abc\n"), "--out", done], ["attack_params"]),
        (["run", "--config", _yaml(tmp_path, "dp.yaml", "defense_params: 5\n"), "--out", done], ["defense_params"]),
        (["run", "--config", _yaml(tmp_path, "ss.yaml", "data: {synthetic_shape: abc}\n"), "--out", done],
         ["synthetic_shape"]),
        (["run", "--config", _yaml(tmp_path, "st.yaml", "data: {synthetic_train: -5}\n"), "--out", done],
         ["synthetic_train"]),
        (["run", "--config", _yaml(tmp_path, "r.yaml", "rounds: true\n"), "--out", done], ["rounds"]),
        (["run", "--config", _yaml(tmp_path, "bin.yaml", bytes(range(256))), "--out", done], ["bin.yaml"]),
        (["run", "--config", _yaml(tmp_path, "k.yaml", "1: 2\n"), "--out", done], ["config key"]),
        (["run", "--config", _yaml(tmp_path, "pp.yaml", "preset: [x]\n"), "--out", done], ["preset"]),
        (["run", "--config", _yaml(tmp_path, "atk.yaml", "attack: lie\nattack_params: {z: abc}\n"), "--out", done],
         ["z"]),
        (["bench", "--grid", _yaml(tmp_path, "g1.yaml", "grid: {clients: [10\n"), "--out", done], ["g1.yaml"]),
        (["bench", "--grid", _yaml(tmp_path, "g2.yaml", "- a\n- b\n"), "--out", done], ["mapping"]),
        (["bench", "--grid", _yaml(tmp_path, "g3.yaml", "5\n"), "--out", done], ["mapping"]),
        (["bench", "--grid", _yaml(tmp_path, "g4.yaml", "base: [1, 2]\ngrid: {seed: [0]}\n"), "--out", done],
         ["base"]),
        (["bench", "--grid", _yaml(tmp_path, "g5.yaml", "grid: {nonsense: [1]}\n"), "--out", done], ["nonsense"]),
        (["bench", "--grid", _yaml(tmp_path, "g6.yaml", "grid: {seed: 3}\n"), "--out", done], ["list of values"]),
        (["report", done, "--out", a_file], ["a-file.txt"]),
        (["report", _yaml(tmp_path, "bad.parquet", b"PAR1 not really"), "--out", str(tmp_path / "rep")],
         ["bad.parquet"]),
    ]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda c: cli(*c[0]), cases))
    for (args, needles), proc in zip(cases, procs):
        assert_one_line_error(proc, *needles)
    assert digest(finished_run) == before
    assert not (tmp_path / "c").exists()


def test_unreachable_address_fails_fast_in_one_line(tmp_path):
    t0 = time.monotonic()
    proc = cli("run", *TINY, "--address", "127.0.0.1:6399", "--connect-timeout", "3", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "127.0.0.1:6399")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "o").exists()


def test_crafted_checkpoints_never_run(finished_run, tmp_path):
    """A results folder must not run code: new-format checkpoints load weights-only, old pickles never load."""
    marker = tmp_path / MARKER
    cfg = build_config(overrides={**TINY_CFG, "attack": "min_max"})
    planted = tmp_path / "planted"
    shutil.copytree(finished_run, planted)
    meta = json.loads((planted / "_state" / "checkpoint.json").read_text())
    assert meta["config_hash"] == config_hash(cfg)
    (planted / "_state" / meta["file"]).write_bytes(pickle.dumps({"weights": Evil(marker), "round": 1}))
    legacy = tmp_path / "legacy"
    shutil.copytree(finished_run, legacy)
    shutil.rmtree(legacy / "_state")
    (legacy / "checkpoint.pt").write_bytes(pickle.dumps(Evil(marker)))
    study = tmp_path / "study"
    cell = study / "synthetic-mlp-n10-m0.2-min_max-skymask-s0"
    shutil.copytree(legacy, cell)

    runs = [cli("run", *TINY, "--attack", "min_max", "--resume", "--out", str(planted)),
            cli("run", *TINY, "--attack", "min_max", "--resume", "--out", str(legacy)),
            cli("bench", "--dataset", "synthetic", "--model", "mlp", "--rounds", "2", "--workers", "2",
                "--clients", "10", "--attack", "min_max", "--defense", "skymask", "--out", str(study))]
    assert_one_line_error(runs[0], "refusing checkpoint")
    assert_one_line_error(runs[1], "older skymask-ray")
    assert_one_line_error(runs[2], "older skymask-ray")
    assert not marker.exists()


def test_overwrite_replaces_only_after_the_first_round_and_drops_stale_masks(finished_run, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(finished_run, out)
    before = digest(out)
    # a run that fails during set-up (an unknown node) leaves the old run in place
    bad = cli("run", *TINY, "--defense", "fedavg", "--overwrite", "--address", "127.0.0.1:6399",
              "--connect-timeout", "1", "--out", str(out))
    assert_one_line_error(bad, "6399")
    assert digest(out) == before
    ok = cli("run", *TINY, "--defense", "fedavg", "--overwrite", "--out", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert not (out / "_masks.parquet").exists()  # the former skymask run's masks went with it
    assert "defense: fedavg" in (out / "_config.yaml").read_text()
    assert digest(out)["rounds.parquet"] != before["rounds.parquet"]


def test_divergence_mid_run_is_one_line_and_keeps_finished_rows(tmp_path):
    out = tmp_path / "d"
    proc = cli("run", "--dataset", "synthetic", "--model", "mlp", "--clients", "10", "--workers", "2",
               "--defense", "fedavg", "--global-lr", "1e25", "--grad-clip", "1e30", "--rounds", "4", "--out", str(out))
    line = assert_one_line_error(proc, "round 2", "diverged")
    assert "rounds.parquet" in line
    from skymask_ray.results import read_parquet

    assert read_parquet(out / "rounds.parquet").column("round").to_pylist() == [1]
