"""Atomic writes, the run folder's rules, checkpoints that cannot run code, and grid cells that never collide."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from skymask_ray import cli
from skymask_ray.config import config_hash
from skymask_ray.experiment import build_config
from skymask_ray.errors import ConfigError, ResultsFolderError, ResultsWriteError
from skymask_ray.run_folder import Checkpoint, RunFolder
from skymask_ray.storage import atomic_write, atomic_write_text
from skymask_ray.study import Study, cell_name

TINY = {"data": {"dataset": "synthetic"}, "model": "mlp", "clients": 10, "rounds": 1}


def test_failed_write_leaves_the_old_file_and_names_file_and_disk(tmp_path):
    target = tmp_path / "rounds.parquet"
    atomic_write_text(target, "old")

    def full_disk(fh):
        fh.write(b"half of the new file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ResultsWriteError) as err:
        atomic_write(target, full_disk)
    assert target.read_text() == "old"
    msg = str(err.value)
    assert "no space left" in msg and str(target) in msg and "MB free" in msg and "\n" not in msg
    assert [p.name for p in tmp_path.iterdir()] == ["rounds.parquet"]  # no temp file left behind


def test_atomic_write_gives_usual_permissions(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "x")
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _ckpt(r: int) -> Checkpoint:
    return Checkpoint(r, torch.arange(5.0) * r, {"bn": torch.ones(2)}, {"center": torch.zeros(5)}, {"step": r})


def test_folder_rules_new_resume_overwrite(tmp_path):
    f = RunFolder(tmp_path / "run")
    assert f.prepare("h1", "new") is None  # empty: anything goes
    f.path.mkdir()
    pq.write_table(pa.table({"round": [1, 2]}), f.path / "rounds.parquet")
    rows = (f.path / "rounds.parquet").read_bytes()
    with pytest.raises(ResultsFolderError, match="--resume.*--overwrite"):
        f.prepare("h1", "new")
    with pytest.raises(ResultsFolderError, match="no checkpoint"):
        f.prepare("h1", "resume")
    assert f.prepare("h1", "overwrite") is None
    f.save_checkpoint(_ckpt(1), "h1", "0")
    f.save_checkpoint(_ckpt(2), "h1", "0")
    assert sorted(p.name for p in f.state_dir.iterdir()) == ["checkpoint-2.pt", "checkpoint.json"]
    got = f.prepare("h1", "resume")
    assert got.round == 2 and torch.equal(got.weights, torch.arange(5.0) * 2) and got.attack_state == {"step": 2}
    with pytest.raises(ResultsFolderError, match="another config"):
        f.prepare("h2", "resume")
    assert (f.path / "rounds.parquet").read_bytes() == rows  # prepare never writes


def test_commit_removes_only_what_the_new_run_does_not_replace(tmp_path):
    f = RunFolder(tmp_path)
    for name in ("rounds.parquet", "_masks.parquet", "masks.parquet", "config.yaml", "checkpoint.pt"):
        (tmp_path / name).write_bytes(b"old")
    f.save_checkpoint(_ckpt(3), "h", "0")
    f.commit(keep_masks=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rounds.parquet"]
    (tmp_path / "_masks.parquet").write_bytes(b"old")
    f.commit(keep_masks=True)
    assert (tmp_path / "_masks.parquet").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    f = RunFolder(tmp_path)
    f.save_checkpoint(_ckpt(1), "h", "0")
    marker = tmp_path / "pwned"
    (f.state_dir / "checkpoint-1.pt").write_bytes(pickle.dumps({"weights": _Evil(marker), "round": 1}))
    with pytest.raises(ResultsFolderError, match="refusing checkpoint"):
        f.prepare("h", "resume")
    assert not marker.exists()
    (f.state_dir / "checkpoint.json").write_text(json.dumps(
        {"format": 1, "round": 1, "file": "../../etc/passwd", "config_hash": "h"}))
    with pytest.raises(ResultsFolderError, match="not a skymask-ray checkpoint"):
        f.prepare("h", "resume")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "checkpoint.pt").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ResultsFolderError, match="never loaded"):
        RunFolder(legacy).prepare("h", "resume")
    assert not marker.exists()


@pytest.mark.parametrize("key, values", [
    ("bias", [0.3, 0.5]), ("partition", ["iid", "dirichlet"]), ("rounds", [1, 2]),
    ("train.local_lr", [0.1, 0.5]), ("skymask.mask_epochs", [5, 20]), ("data.root_size", [50, 100]),
    ("attack_params.z", [1.0, 1.5]),
])
def test_every_gridded_key_gives_a_distinct_cell(key, values):
    base = {**TINY, "attack": "lie"} if key.startswith("attack_params") else TINY
    names = [c.name for c in Study("t", base=base, grid={key: values}, seeds=(0, 1)).expand()]
    assert len(set(names)) == 4
    leaf = key.split(".")[-1]
    assert all(f"-{leaf}=" in n for n in names)


def test_standard_grids_keep_their_old_folder_names():
    cfg = build_config(overrides={**TINY, "attack": "min_max"})
    assert cell_name(cfg) == "synthetic-mlp-n10-m0.2-min_max-skymask-s0"
    [cell] = Study("t", base=TINY, grid={"attack": ["min_max"]}).expand()
    assert cell.name == cell_name(cfg)


def test_grid_errors_are_config_errors():
    with pytest.raises(ConfigError, match="unknown study key"):
        Study("t", base=TINY, grid={"nonsense": [1]})
    with pytest.raises(ConfigError, match="section"):
        Study("t", base=TINY, grid={"train": [1]})
    with pytest.raises(ConfigError, match="same config field"):
        Study("t", base=TINY, grid={"malicious": [0.1], "malicious_fraction": [0.2]})
    with pytest.raises(ConfigError, match="share a folder"):
        Study("t", base=TINY, grid={"train.local_lr": [0.5, 0.50]}).expand()


@pytest.mark.parametrize("name", ["rounds.parquet", "_masks.parquet"])
def test_resume_over_a_corrupt_rows_file_is_one_line(tmp_path, name):
    """--resume keeps the rows already written: one that is not Parquet stops the run before it starts."""
    overrides = {**TINY, "rounds": 2}
    cfg = build_config(overrides=overrides)
    RunFolder(tmp_path).save_checkpoint(Checkpoint(round=1, weights=torch.zeros(3)), config_hash(cfg), "0")
    (tmp_path / name).write_bytes(b"PAR1 not parquet at all")
    res = CliRunner().invoke(cli.main, ["run", "--dataset", "synthetic", "--model", "mlp", "--clients", "10",
                                        "--rounds", "2", "--out", str(tmp_path), "--resume"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: cannot resume: {tmp_path / name} is not a readable Parquet file")
    assert lines[0].endswith("pass --overwrite to start over")
