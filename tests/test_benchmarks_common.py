"""benchmarks.common: cell names, Markdown tables, results paths, study files, options."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks
from benchmarks.common import (
    RESULTS,
    cell_parser,
    command_line,
    comma_list,
    invocation,
    load_study,
    markdown_table,
    parse_cell_name,
    results_path,
)
from skymask_ray.bench import cell_name, expand_grid

SMOKE = {"data": {"dataset": "digits", "root_size": 50}, "model": "mlp", "rounds": 2}


@pytest.mark.parametrize(("clients", "fraction", "attack", "defense", "seed"), [
    (10, 0.2, "min_max", "skymask", 0),
    (20, 0.0, "none", "fedavg", 3),
    (10, 0.25, "lie_backdoor", "centered_clipping", 12),
])
def test_cell_name_round_trip(clients: int, fraction: float, attack: str, defense: str, seed: int) -> None:
    grid = {"clients": [clients], "malicious_fraction": [fraction], "attack": [attack], "defense": [defense],
            "seed": [seed]}
    (cfg,) = expand_grid(None, None, SMOKE, grid)
    coords = parse_cell_name(cell_name(cfg))
    assert coords == {"dataset": "digits", "model": "mlp", "clients": clients, "malicious_fraction": fraction,
                      "attack": attack, "defense": defense, "seed": seed}


def test_cell_name_parser_rejects_other_names() -> None:
    with pytest.raises(ValueError, match="not a cell name"):
        parse_cell_name("fmnist-cnn-100-min_max-skymask")


def test_markdown_table() -> None:
    text = markdown_table(["N", "variant", "s"], [[100, "a", "0.5"], [500, "b", "1.5"]], align="lrr")
    assert text.splitlines() == ["| N | variant | s |", "|---|---:|---:|", "| 100 | a | 0.5 |", "| 500 | b | 1.5 |"]
    assert markdown_table(["a", "b"], []) == "| a | b |\n|---|---|"
    with pytest.raises(ValueError, match="one letter per column"):
        markdown_table(["a", "b"], [], align="l")


def test_results_path_does_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    here = results_path("attack_table.md")
    monkeypatch.chdir(tmp_path)
    assert results_path("attack_table.md") == here
    assert here.is_absolute() and here == Path(benchmarks.__file__).resolve().parent / "results" / "attack_table.md"
    assert RESULTS.is_dir()


def test_studies_are_the_scripts_grids() -> None:
    sweep = load_study("fraction_sweep")
    assert sweep.rounds == 10  # the committed fraction_sweep.md was run with 10 rounds (the attack table's cells)
    assert sorted(sweep.grid["malicious_fraction"]) == [0.2, 0.4, 0.6, 0.8]
    paper = load_study("paper_fmnist")
    assert paper.rounds == 30 and len(paper.grids()) == 8
    assert paper.grids()[0] == {"attack": ["none"], "malicious_fraction": [0.2], "defense": ["fedavg"]}
    table = load_study("attack_table")
    assert table.rounds == 10 and set(table.attack_params) <= set(table.grid["attack"])


def test_cell_parser_defaults_come_from_the_study(tmp_path: Path) -> None:
    study = load_study("fraction_sweep")
    ap = cell_parser("Doc line.\n\nmore", "benchmarks/fraction_sweep.py", study, "attack_table", "x.md",
                     lists=("malicious_fraction", "attack"))
    args = ap.parse_args([])
    assert args.rounds == 10 and args.malicious_fraction == study.grid["malicious_fraction"]
    assert args.attack == ["min_max", "lie"] and args.out == RESULTS / "attack_table" and not args.table_only
    args = ap.parse_args(["--rounds", "3", "--fractions", "0.1,0.5", "--results-md", str(tmp_path / "t.md")])
    assert args.rounds == 3 and args.malicious_fraction == [0.1, 0.5] and args.results_md == tmp_path / "t.md"
    assert ap.prog == "python -m benchmarks.fraction_sweep"


def test_command_line_and_lists() -> None:
    assert invocation("/x/benchmarks/scaling.py") == "python -m benchmarks.scaling"
    assert command_line("fraction_sweep.py", ["--rounds", "10", "--table-only"]) == \
        "python -m benchmarks.fraction_sweep --rounds 10"
    assert comma_list(int)("100,500") == [100, 500] and comma_list(float)("0.2") == [0.2]
