"""Study files: every one parses and expands, --only narrows to the file's own cells, shared cells stay shared."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

import skymask_ray.bench
from skymask_ray import cli
from skymask_ray.config import config_hash
from skymask_ray.errors import ConfigError
from skymask_ray.study import Study, load_study, parse_only

STUDIES = Path(__file__).resolve().parents[1] / "benchmarks" / "studies"
SMOKE = {"data": {"dataset": "digits", "root_size": 50}, "model": "mlp", "rounds": 2}


def hashes(cells) -> dict[str, str]:
    return {c.name: config_hash(c.config) for c in cells}


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_file_parses_and_expands_into_distinct_valid_cells(path: Path) -> None:
    study = load_study(path)
    cells = study.expand()
    assert cells and len({c.name for c in cells}) == len(cells)
    assert len({(config_hash(c.config), c.config.rounds) for c in cells}) == len(cells)  # no experiment twice
    assert study.title and study.description and study.tables


def test_a_narrowed_axis_gives_the_files_own_cells() -> None:
    """``--only cohort=50 --only seed=1,2`` is the cohort-50 slice of population.yaml for seeds 1 and 2: the same
    names and configs as a study whose axis holds only those values (what population_seeds.yaml once copied)."""
    study = load_study(STUDIES / "population.yaml")
    narrowed = study.narrow(parse_only(["cohort=50", "seed=1,2"]))
    subset = dataclasses.replace(study, grid={**study.grid, "cohort": [50]}, seeds=(1, 2)).expand()
    assert len(narrowed) == 32 and hashes(narrowed) == hashes(subset)
    assert [c.name for c in narrowed] == [c.name for c in subset]
    whole = hashes(study.expand())
    assert all(whole[name] == h for name, h in hashes(narrowed).items())


def test_narrowing_explicit_cells_keeps_their_order() -> None:
    study = load_study(STUDIES / "scaling.yaml")
    cells = study.narrow({"clients": [500]})
    assert [c.config.malicious_fraction for c in cells] == [0.2, 0.0, 0.4, 0.6, 0.8]
    assert [c.name for c in cells] == [c.name for c in study.expand() if c.config.clients == 500]


def test_only_rejects_values_and_keys_the_study_does_not_have() -> None:
    study = load_study(STUDIES / "population.yaml")
    with pytest.raises(ConfigError, match=r"--only cohort: 60 not in study 'population' \(its values: 50, 200, 1000\)"):
        study.narrow({"cohort": [60]})
    with pytest.raises(ConfigError, match="unknown study key 'nosuch'"):
        study.narrow({"nosuch": [1]})
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_only(["seed"])
    assert parse_only(["seed=1,2", "malicious=0.2", "seed=3"]) == {"seed": [1, 2, 3], "malicious": [0.2]}


def test_cells_take_their_own_axes_and_mappings() -> None:
    study = Study("t", base=SMOKE, grid={"defense": ["fedavg", "median"]}, seeds=(0, 1), cells=(
        {"attack": "lie", "grid": {"clients": [10, 20]}},
        {"attack": "layer", "attack_params": {"base": "min_max", "layers": ["last"]}, "clients": 10},
    ))
    cells = study.expand()
    assert len(cells) == 2 * (2 * 2 + 2)
    assert [c.config.seed for c in cells] == [0] * 6 + [1] * 6  # seed by seed: every cell of seed 0 first
    layer = [c for c in cells if c.config.attack == "layer"]
    assert all(c.config.attack_params == {"base": "min_max", "layers": ["last"]} for c in layer)
    assert all("-attack_params=" in c.name for c in layer) and not any("-attack_params=" in c.name
                                                                    for c in cells if c.config.attack == "lie")


@pytest.mark.parametrize("kwargs, needle", [
    ({"grid": {"seed": [0, 1]}}, "give the seeds as 'seeds"),
    ({"grid": {"attack": ["lie"]}, "cells": ({"attack": "min_max"},)}, "attack given twice"),
    ({"cells": ({"grid": {"clients": []}},)}, "non-empty list"),
    ({"seeds": ()}, "non-empty list of integers"),
    ({"grid": {"attack": "lie"}}, "non-empty list"),
])
def test_study_mistakes_are_config_errors(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Study("t", base=SMOKE, **kwargs)


@pytest.mark.parametrize("text, needle", [
    ("seed: [0]\n", "unknown key(s) seed"),
    ("tables: [{title: t, rows: [attack], values: [acc:median]}]\n", "not one of"),
    ("tables: [{title: t, rows: [attack], values: [detection:min(attack)]}]\n", "fixed aggregation"),
    ("tables: [{title: t, rows: [nosuch], values: [accuracy]}]\n", "unknown study key 'nosuch'"),
    ("tables: [{title: t, rows: [], values: [accuracy]}]\n", "'rows' must be a non-empty list"),
    ("tables: [{title: t, rows: [attack], values: [accuracy:mean(attack)]}]\n", "only min and max"),
])
def test_study_file_mistakes_name_the_file(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("base: {rounds: 1}\n" + text)
    with pytest.raises(ConfigError, match="study file .*bad.yaml") as e:
        load_study(f)
    assert needle in str(e.value)


def test_shared_cells_are_the_same_experiment_in_every_study() -> None:
    """The pre-aggregator study's plain cells and the fraction sweep's 20 % cells are the attack table's."""
    table = hashes(load_study(STUDIES / "attack_table.yaml").expand())
    pre = load_study(STUDIES / "pre_aggregators.yaml").expand()
    plain = hashes(c for c in pre if not c.config.defense_params and c.config.defense in ("fedavg",))
    assert plain and all(table[name] == h for name, h in plain.items())
    sweep = hashes(c for c in load_study(STUDIES / "fraction_sweep.yaml").expand()
                   if c.config.malicious_fraction == 0.2 and c.config.defense in ("fedavg", "skymask"))
    assert len(sweep) == 12 and all(table[name] == h for name, h in sweep.items())


def test_bench_only_runs_the_narrowed_cells(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(skymask_ray.bench, "run_grid", lambda cells, out, **kw: calls.append(cells) or [])
    monkeypatch.setattr(skymask_ray.bench, "summary_table", lambda rows: "table")
    res = CliRunner().invoke(cli.main, ["bench", "--grid", str(STUDIES / "population.yaml"), "--only", "cohort=50",
                                        "--only", "seed=1,2", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    [cells] = calls
    expected = load_study(STUDIES / "population.yaml").narrow({"cohort": [50], "seed": [1, 2]})
    assert [c.name for c in cells] == [c.name for c in expected]
    res = CliRunner().invoke(cli.main, ["bench", "--grid", str(STUDIES / "population.yaml"), "--only", "seed=7",
                                        "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and res.output.startswith("error: --only seed: 7 not in study")
