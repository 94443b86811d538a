"""Studies: a grid file runs every cell once, resumes by skipping finished cells, and reports."""

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from skymask_ray.cli import main

pytestmark = pytest.mark.slow


def test_grid_study_resumes_and_reports(ray_cluster, tmp_path):
    out = tmp_path / "study"
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--grid", "benchmarks/studies/smoke.yaml", "--workers", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 cells, 0 already complete" in res.output
    cells = sorted(p.parent.name for p in out.glob("*/rounds.parquet"))
    assert cells == ["digits-mlp-n10-m0.2-min_max-fedavg-s0", "digits-mlp-n10-m0.2-min_max-skymask-s0",
                     "digits-mlp-n20-m0.2-min_max-fedavg-s0", "digits-mlp-n20-m0.2-min_max-skymask-s0"]
    assert all(pq.read_table(out / c / "rounds.parquet").num_rows == 2 for c in cells)
    meta = json.loads((out / "_metadata.json").read_text())
    assert {"package_version", "git_commit", "ray", "torch", "cpu_count", "wall_time_s"} <= set(meta)
    assert "| 20 | 0.200 | min_max | skymask |" in (out / "_summary.md").read_text()

    again = runner.invoke(main, ["bench", "--grid", "benchmarks/studies/smoke.yaml", "--workers", "2", "--out", str(out),
                                 "--save-rows", str(tmp_path / "smoke.parquet")])
    assert again.exit_code == 0 and "4 cells, 4 already complete" in again.output
    saved = pq.read_table(tmp_path / "smoke.parquet")
    assert saved.num_rows == 8 and sorted(set(saved.column("cell").to_pylist())) == cells
    for source in (out, tmp_path / "smoke.parquet"):  # a study's tables from its folder or its one file
        tab = runner.invoke(main, ["report", "benchmarks/studies/smoke.yaml", "--table", "--rows", str(source)])
        assert tab.exit_code == 0, tab.output
        lines = [ln for ln in tab.output.splitlines() if ln.startswith("| 10 |") or ln.startswith("| 20 |")]
        assert len(lines) == 2 and all(ln.count(" · ") == 1 for ln in lines), tab.output  # skymask's rates only

    rep = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    pngs = list((tmp_path / "report").glob("*.png"))
    assert any(p.name.startswith("accuracy_vs_round") for p in pngs)
    assert any(p.name.startswith("mask_pca") for p in pngs)
    assert (tmp_path / "report" / "summary.md").exists()


def test_krum_impossible_fraction_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["run", "--clients", "10", "--malicious", "0.4", "--defense", "krum",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("error:") and "krum" in res.output
