"""The held-out study (benchmarks/studies/held_out.yaml) stays what benchmarks/PROTOCOL.md fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from skymask_ray.config import SkyMaskConfig
from skymask_ray.study import load_study

FILE = Path(__file__).parents[1] / "benchmarks" / "studies" / "held_out.yaml"
DEVELOPMENT_SEEDS = {0, 1, 2}


def cells():
    return [c.config for c in load_study(FILE).expand()]


def test_the_held_out_study_covers_every_axis_of_the_protocol():
    every = cells()
    assert len(every) == 243
    attacks = {(c.attack, c.malicious_fraction) for c in every}
    assert attacks == {(a, f) for a in ("lie", "min_max", "fang_trim", "ipm", "poisonedfl") for f in (0.2, 0.5)} | {
        ("none", 0.2)}
    assert {(c.data.dataset, c.model) for c in every} == {("fmnist", "cnn"), ("digits", "mlp")}
    assert {(c.data.partition, c.data.alpha if c.data.partition == "dirichlet" else None) for c in every} == {
        ("bias", None), ("dirichlet", 0.3)}
    assert {(c.clients, c.cohort_size) for c in every} == {(100, 100), (1000, 50), (1000, 200)}


def test_held_out_cells_use_no_development_seed_and_the_current_rule_defaults():
    for c in cells():
        assert c.seed in {3, 4, 5} and c.seed not in DEVELOPMENT_SEEDS
        assert c.defense == "skymask" and c.skymask.select in ("gmm2", "silhouette", "spectral")
        assert c.skymask == dataclasses.replace(SkyMaskConfig(), select=c.skymask.select)  # no knob overridden
        assert c.malicious_selection == "random" and c.rounds == 10
        assert c.attack in ("none", "poisonedfl") or c.attack_params == {"spread": 1.0}
        moved = [c.data.dataset != "fmnist", c.data.partition != "bias", c.clients != 100]
        assert sum(moved) <= 1  # one axis at a time from the development base


def test_the_second_held_out_set_uses_fresh_seeds_and_cohort_sizes_no_development_run_saw():
    """Protocol rule 3: the first set's cohorts of 50 and 200 became development data when spectral's
    neighbour count was changed for them, so the second set holds out new seeds and new cohort sizes."""
    second = [c.config for c in load_study(FILE.with_name("held_out_2.yaml")).expand()]
    assert len(second) == 162
    assert {c.seed for c in second} == {6, 7, 8}
    assert not {c.seed for c in second} & ({c.seed for c in cells()} | DEVELOPMENT_SEEDS)
    assert {(c.clients, c.cohort_size) for c in second} == {(100, 100), (1000, 30), (1000, 100)}
    assert {c.skymask.select for c in second} == {"gmm2", "spectral"}
    for c in second:
        assert c.skymask == dataclasses.replace(SkyMaskConfig(), select=c.skymask.select)
        assert c.malicious_selection == "random" and c.rounds == 10
        assert sum([c.data.dataset != "fmnist", c.data.partition != "bias", c.clients != 100]) <= 1
