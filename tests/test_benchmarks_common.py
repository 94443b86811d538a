"""benchmarks.common: cell names, Markdown tables, results paths, study files, options."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks
from benchmarks.common import (
    RESULTS,
    STUDIES,
    add_spread_option,
    apply_spread,
    cell_parser,
    command_line,
    comma_list,
    invocation,
    group_cells,
    load_study,
    markdown_table,
    mean_sd,
    parse_cell_name,
    run_cells,
    results_path,
    spread_params,
)
from benchmarks.attack_table import mean_cell, seeds_text
from benchmarks.paper_fmnist import seeds_table
from skymask_ray.bench import cell_name, expand_grid, expand_named_grid
from skymask_ray.config import config_hash

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


def _spread_parser() -> object:
    ap = cell_parser(None, "benchmarks/fraction_sweep.py", load_study("fraction_sweep"), "attack_table",
                     "fraction_sweep.md", lists=("seed",))
    add_spread_option(ap)
    return ap


def test_spread_moves_only_default_paths(tmp_path: Path) -> None:
    ap = _spread_parser()
    args = ap.parse_args([])
    apply_spread(ap, args, "fraction_sweep")  # spread 0: the paper's cells, shared with the attack table
    assert args.out == RESULTS / "attack_table" and args.results_md == RESULTS / "fraction_sweep.md"
    assert args.seed == [0] and spread_params(args.spread) == {}
    args = ap.parse_args(["--spread", "1", "--seeds", "0,1,2"])
    apply_spread(ap, args, "fraction_sweep")
    assert args.out == RESULTS / "fraction_sweep_spread1" and args.results_md == RESULTS / "fraction_sweep_spread1.md"
    assert spread_params(args.spread) == {"attack_params": {"spread": 1.0}} and args.seed == [0, 1, 2]
    args = ap.parse_args(["--spread", "0.5", "--out", str(tmp_path / "cells")])
    apply_spread(ap, args, "fraction_sweep")
    assert args.out == tmp_path / "cells" and args.results_md == RESULTS / "fraction_sweep_spread0.5.md"
    with pytest.raises(SystemExit):
        apply_spread(ap, ap.parse_args(["--spread", "-1"]), "fraction_sweep")


def test_seed_cells_give_mean_sd_and_say_when_seeds_are_missing() -> None:
    assert mean_sd([]) == "-" and mean_sd([0.5]) == "0.500" and mean_sd([0.7, 0.8]) == "0.750 ± 0.071"
    one = {"accuracy": 0.7, "backdoor_success": None, "tpr": 1.0, "fpr": 0.0}
    two = {"accuracy": 0.8, "backdoor_success": None, "tpr": 0.5, "fpr": 0.2}
    assert seeds_text([one, two], "skymask", 2) == "0.750 ± 0.071 · 0.75/0.10"
    assert seeds_text([one, two], "fedavg", 3) == "0.750 ± 0.071 (2 of 3 seeds)"
    assert seeds_text([one], "skymask", 1) == "0.700 · 1.00/0.00"
    assert seeds_text([], "skymask", 3) == "not run"
    bd = [{**one, "backdoor_success": 0.1}, {**two, "backdoor_success": 0.3}]
    assert seeds_text(bd, "skymask", 2) == "0.750 ± 0.071 (0.20) · 0.75/0.10"


def test_group_cells_keeps_complete_cells_by_key_in_run_order() -> None:
    class Cfg:
        def __init__(self, attack: str, seed: int) -> None:
            self.attack, self.seed = attack, seed

    cells = [(Cfg("lie", 0), {"accuracy": 0.1}), (Cfg("ipm", 0), None), (Cfg("lie", 1), {"accuracy": 0.2}),
             (Cfg("ipm", 1), {"accuracy": 0.3})]
    assert group_cells(cells, lambda c: c.attack) == {"lie": [{"accuracy": 0.1}, {"accuracy": 0.2}],
                                                       "ipm": [{"accuracy": 0.3}]}


def test_mean_cell_averages_each_rate_over_the_seeds_that_have_it() -> None:
    cells = [{"accuracy": 0.7, "backdoor_success": None, "tpr": None, "fpr": 0.2},
             {"accuracy": 0.8, "backdoor_success": None, "tpr": 0.5, "fpr": 0.4}]
    m = mean_cell(cells)
    assert m["accuracy"] == pytest.approx(0.75) and m["fpr"] == pytest.approx(0.3)
    assert m["tpr"] == 0.5 and m["backdoor_success"] is None


def test_attack_table_seeds_are_the_fraction_sweeps_cells() -> None:
    table, sweep = load_study("attack_table"), load_study("fraction_sweep")
    grid = {**sweep.grid, "malicious_fraction": [0.2], "seed": [1]}
    ours = {name: config_hash(cfg) for cfg, name in expand_named_grid(sweep.preset, None, sweep.base, grid)}
    theirs = {name: config_hash(cfg) for cfg, name in expand_named_grid(
        table.preset, None, table.base, {**table.grid, "attack": grid["attack"], "defense": grid["defense"],
                                         "seed": [1]})}
    assert ours and ours == theirs and all(name.endswith("-s1") for name in ours)


def test_a_list_option_of_a_key_the_grid_does_not_vary_defaults_to_the_base_value() -> None:
    paper = load_study("paper_fmnist")  # explicit cells, seed in base
    ap = cell_parser(None, "benchmarks/paper_fmnist.py", paper, "paper_fmnist", "paper_fmnist.md", lists=("seed",))
    assert ap.parse_args([]).seed == [paper.base["seed"]] == [0]
    assert ap.parse_args(["--seeds", "0,1,2"]).seed == [0, 1, 2]


def test_paper_seeds_table_groups_runs_over_seeds() -> None:
    def run(attack: str, defense: str, seed: int, acc: float, tpr: float | None, fpr: float | None) -> dict:
        return {"malicious_fraction": 0.2, "attack": attack, "defense": defense, "seed": seed, "accuracy": acc,
                "tpr": tpr, "fpr": fpr}

    runs = [run("min_max", "skymask", 0, 0.80, 1.0, 0.0), run("none", "fedavg", 0, 0.70, 0.0, 0.0),
            run("min_max", "skymask", 1, 0.90, 0.5, 0.2)]
    rows = seeds_table(runs, 3).splitlines()[2:]
    assert rows == ["| 20% | min_max | skymask | 2 of 3 | 0.850 ± 0.071 | 0.750 ± 0.354 | 0.100 ± 0.141 |",
                    "| 20% | none | fedavg | 1 of 3 | 0.700 | - | - |"]


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_file_expands_into_valid_cells(path: Path) -> None:
    study = load_study(path)
    names = []
    for grid in study.grids():
        for attack in grid.get("attack", [None]):
            one = {**grid, "attack": [attack]} if attack else grid
            base = {**study.base, "attack_params": study.attack_params.get(attack, {})} if study.attack_params \
                else study.base
            names += [name for _, name in expand_named_grid(study.preset, None, base, one)]
    assert names and len(set(names)) == len(names)


def test_pre_aggregator_study_reuses_the_attack_tables_cells() -> None:
    pre, table = load_study("pre_aggregators"), load_study("attack_table")
    plain = {k: v for k, v in pre.grid.items() if k != "defense_params.pre"}
    ours = {name: config_hash(cfg) for cfg, name in expand_named_grid(pre.preset, None, pre.base, plain)}
    theirs = {name: config_hash(cfg) for cfg, name in expand_named_grid(
        table.preset, None, table.base, {**table.grid, "defense": plain["defense"], "seed": plain["seed"]})}
    assert ours and all(theirs.get(name) == h for name, h in ours.items())
    with_pre = [name for _, name in expand_named_grid(pre.preset, None, pre.base, pre.grid)]
    assert all(name.endswith(("-pre=nnm", "-pre=bucketing")) for name in with_pre)


def test_population_seeds_study_is_the_population_studys_cohort_50_slice() -> None:
    """population_seeds.yaml repeats population.yaml's base: its cells must stay that study's, seed aside."""
    whole, seeds = load_study("population"), load_study("population_seeds")
    ours = {name: config_hash(cfg) for cfg, name in expand_named_grid(seeds.preset, None, seeds.base, seeds.grid)}
    theirs = {name: config_hash(cfg) for cfg, name in expand_named_grid(
        whole.preset, None, whole.base, {**whole.grid, "cohort": [50], "seed": seeds.grid["seed"]})}
    assert len(ours) == 32 and ours == theirs


def test_a_bad_cell_value_exits_with_one_line_before_anything_runs(tmp_path: Path) -> None:
    jobs = [(SMOKE, {"attack": ["min_max"]}), (SMOKE, {"attack": ["nosuch"]})]
    with pytest.raises(SystemExit, match=r"^error: unknown attack 'nosuch'") as e:
        run_cells(None, jobs, tmp_path / "cells", run=True)
    assert "\n" not in str(e.value) and not (tmp_path / "cells").exists()
