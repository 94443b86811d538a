"""A study's declared tables from its rows, the one Markdown writer, and the committed results page."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from skymask_ray import cli
from skymask_ray.errors import ConfigError
from skymask_ray.markdown import markdown_table
from skymask_ray.pages import results_page, study_section, study_tables
from skymask_ray.results import config_record, read_parquet
from skymask_ray.study import Study, load_study, study_files
from skymask_ray.tables import TableSpec

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "benchmarks" / "studies"
PAGE = ROOT / "benchmarks" / "RESULTS.md"
SMOKE = {"data": {"dataset": "digits", "root_size": 50}, "model": "mlp", "rounds": 2, "malicious_fraction": 0.2}


def rows_of(study: Study, metrics, skip=()) -> pa.Table:
    """Two rounds per cell; ``metrics(cfg, round)`` gives accuracy, tpr, fpr, tp, fp, backdoor."""
    out = []
    for cell in study.expand():
        if cell.name in skip:
            continue
        for r in (1, 2):
            acc, tpr, fpr, tp, fp, bd = metrics(cell.config, r)
            out.append({"cell": cell.name, "round": r, "seed": cell.config.seed, "attack": cell.config.attack,
                        "defense": cell.config.defense, "accuracy": acc, "backdoor_success": bd, "tpr": tpr,
                        "fpr": fpr, "tp": tp, "fp": fp, "fallback": False, "single_component": None,
                        "t_round": 1.0 + r, "config": config_record(cell.config)})
    return pa.Table.from_pylist(out)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_pivot_gives_mean_sd_over_seeds_no_rates_for_a_defense_that_never_rejects_and_marks_missing_runs():
    spec = TableSpec(title="t", rows=("attack",), columns=("defense",), values=("accuracy", "backdoor", "detection"))
    study = Study("t", base=SMOKE, grid={"attack": ["min_max", "scaling"], "defense": ["fedavg", "skymask"]},
                  seeds=(0, 1), tables=(spec,))

    def metrics(cfg, r):
        sky = cfg.defense == "skymask"
        acc = 0.5 + 0.1 * cfg.seed + (0.2 if sky else 0.0)
        bd = 0.25 if cfg.attack == "scaling" else None
        return acc, (1.0 if sky else 0.0), (0.5 * r if sky else 0.0), (2 if sky else 0), (r if sky else 0), bd

    skip = {"digits-mlp-n100-m0.2-scaling-skymask-s1", "digits-mlp-n100-m0.2-min_max-fedavg-s0",
            "digits-mlp-n100-m0.2-min_max-fedavg-s1"}
    [text] = study_tables(study, rows_of(study, metrics, skip))
    assert table_lines(text) == [
        "| attack | fedavg | skymask |",
        "|---|---|---|",
        "| min_max | not run | 0.750 ± 0.071 · 1.00/0.75 |",
        "| scaling | 0.550 ± 0.071 (0.25) | 0.700 (0.25) · 1.00/0.75 (1 of 2 runs) |",
    ]
    assert "Seeds 0, 1, 5 runs" in text


def test_summary_over_a_key_with_min_max_labels_exclusion_and_numeric_order():
    spec = TableSpec(title="per defense", rows=("defense", "malicious_fraction"), exclude={"attack": ("none",)},
                     values=("accuracy:mean", "accuracy:min(attack)", "backdoor:max(attack)", "tpr", "t_round"),
                     aggregate="mean")
    study = Study("t", base=SMOKE, grid={"malicious_fraction": [0.4, 0.2], "attack": ["none", "lie", "scaling"],
                                         "defense": ["median", "krum"]}, tables=(spec,))
    acc = {"none": 0.9, "lie": 0.6, "scaling": 0.8}

    def metrics(cfg, r):
        bd = 0.5 if cfg.attack == "scaling" else None
        rej = cfg.defense == "krum"
        return acc[cfg.attack] - cfg.malicious_fraction, (1.0 if rej else 0.0), 0.0, int(rej), 0, bd

    [text] = study_tables(study, rows_of(study, metrics))
    assert table_lines(text)[0] == ("| defense | malicious | mean final accuracy | lowest final accuracy (attack) | "
                                    "highest backdoor success (attack) | mean TPR | round s |")
    assert table_lines(text)[2:] == [
        "| median | 20 % | 0.500 | 0.400 (lie) | 0.50 (scaling) | - | 2.50 |",
        "| median | 40 % | 0.300 | 0.200 (lie) | 0.50 (scaling) | - | 2.50 |",
        "| krum | 20 % | 0.500 | 0.400 (lie) | 0.50 (scaling) | 1.000 | 2.50 |",
        "| krum | 40 % | 0.300 | 0.200 (lie) | 0.50 (scaling) | 1.000 | 2.50 |",
    ]


def test_rows_of_cells_the_study_does_not_declare_are_an_error():
    study = Study("t", base=SMOKE, grid={"defense": ["fedavg"]},
                  tables=(TableSpec(title="t", rows=("defense",)),))
    other = Study("t", base=SMOKE, grid={"defense": ["fedavg", "median"]})
    rows = rows_of(other, lambda cfg, r: (0.5, None, 0.0, 0, 0, None))
    with pytest.raises(ConfigError, match="1 run.* not cells of the study file"):
        study_tables(study, rows)


def test_one_markdown_writer():
    text = markdown_table(["N", "variant", "s"], [[100, "a|b", "0.5"], [500, "b", "1.5"]], align="lrr")
    assert text.splitlines() == ["| N | variant | s |", "|---|---:|---:|", "| 100 | a\\|b | 0.5 |", "| 500 | b | 1.5 |"]
    assert markdown_table(["a", "b"], []) == "| a | b |\n|---|---|"
    with pytest.raises(ValueError, match="one letter"):
        markdown_table(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="a row has 1 cells"):
        markdown_table(["a", "b"], [["x"]])


def test_a_small_studys_committed_table_regenerates_byte_identical():
    """oracle_adaptive's section of the committed page, regenerated from its committed rows."""
    study = load_study(STUDIES / "oracle_adaptive.yaml")
    page = PAGE.read_text()
    start = page.index(f"## {study.title}\n")
    committed = page[start:page.index("\n\n## ", start) + 1]
    source = committed.split("\n\n")[2]
    assert source.startswith("Study file [`studies/oracle_adaptive.yaml`]")
    regenerated = study_section(study, read_parquet(study.committed_rows), source.split(" (3 runs")[0])
    assert regenerated == committed
    assert "| skymask_adaptive | 3 | 0,1,2 |" in regenerated


@pytest.mark.slow
def test_the_results_page_is_generated_from_the_committed_studies():
    """benchmarks/RESULTS.md is what `skymask-ray report benchmarks/studies --table --write ...` writes."""
    studies = [load_study(p) for p in study_files([STUDIES])]
    assert results_page(studies, PAGE, cli.RESULTS_COMMAND) == PAGE.read_text(), \
        f"benchmarks/RESULTS.md is out of date: run `{cli.RESULTS_COMMAND}`"


def test_report_table_prints_a_studys_tables_and_refuses_rows_of_another(tmp_path):
    res = CliRunner().invoke(cli.main, ["report", str(STUDIES / "oracle_adaptive.yaml"), "--table"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("## The adaptive attack") and "| skymask_adaptive | 3 | 0,1,2 |" in res.output
    res = CliRunner().invoke(cli.main, ["report", str(STUDIES / "oracle_adaptive.yaml"), "--table", "--rows",
                                        str(ROOT / "benchmarks" / "results" / "gmm_restarts.parquet")])
    assert res.exit_code == 2 and res.output.startswith("error: study 'oracle_adaptive': 6 run(s)")
    res = CliRunner().invoke(cli.main, ["report", str(STUDIES / "smoke.yaml"), "--table"])
    assert res.exit_code == 2 and "has no committed rows" in res.output
