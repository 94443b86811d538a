"""A run folder and a study folder are each one table for a Parquet reader: the round rows, with the config."""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pytest

from skymask_ray.bench import run_grid
from skymask_ray.study import Study
from skymask_ray.experiment import build_config
from skymask_ray.simulation import run_experiment

pytestmark = pytest.mark.slow

BASE = {"data": {"dataset": "digits", "root_size": 50}, "model": "mlp", "clients": 10, "workers": 2, "rounds": 2,
        "train": {"grad_clip": None}}


def test_run_and_study_folders_read_as_one_table(ray_cluster, tmp_path):
    run = tmp_path / "run"
    run_experiment(build_config(overrides={**BASE, "attack": "min_max", "defense": "skymask"}), run)
    assert (run / "_masks.parquet").exists() and (run / "_state").is_dir()
    frame = pd.read_parquet(run)
    assert list(frame["round"]) == [1, 2] and set(frame["defense"]) == {"skymask"}
    assert frame["config"].iloc[0]["data"]["root_size"] == 50
    assert ds.dataset(run).to_table().num_rows == 2

    study = tmp_path / "study"
    run_grid(Study("tidy", base=BASE, grid={"defense": ["fedavg", "median"], "data.bias": [0.3, 0.6]}).expand(), study)
    table = ds.dataset(study).to_table()
    assert table.num_rows == 4 * 2  # four cells of two rounds, and nothing else (no masks, no metadata)
    frame = table.to_pandas()
    frame["bias"] = [c["data"]["bias"] for c in frame["config"]]
    assert frame.groupby(["defense", "bias"]).size().to_dict() == {
        ("fedavg", 0.3): 2, ("fedavg", 0.6): 2, ("median", 0.3): 2, ("median", 0.6): 2}
    assert len(pd.read_parquet(study)) == 8
