"""The held-out study files (benchmarks/studies/held_out*.yaml) stay what benchmarks/PROTOCOL.md fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from skymask_ray.bench import expand_named_grid, load_grid_file
from skymask_ray.config import SkyMaskConfig

FILES = sorted(Path(__file__).parents[1].glob("benchmarks/studies/held_out*.yaml"))
DEVELOPMENT_SEEDS = {0, 1, 2}


def cells(path: Path):
    preset, base, grid = load_grid_file(path)
    return [cfg for cfg, _ in expand_named_grid(preset, None, base, grid)]


def test_the_held_out_files_cover_every_axis_of_the_protocol():
    names = {p.name for p in FILES}
    assert names == {"held_out.yaml", "held_out_poisonedfl.yaml", "held_out_none.yaml", "held_out_digits.yaml",
                     "held_out_dirichlet.yaml", "held_out_population.yaml"}
    every = [c for p in FILES for c in cells(p)]
    assert len(every) == 243
    attacks = {(c.attack, c.malicious_fraction) for c in every}
    assert attacks == {(a, f) for a in ("lie", "min_max", "fang_trim", "ipm", "poisonedfl") for f in (0.2, 0.5)} | {
        ("none", 0.2)}
    assert {(c.data.dataset, c.model) for c in every} == {("fmnist", "cnn"), ("digits", "mlp")}
    assert {(c.data.partition, c.data.alpha if c.data.partition == "dirichlet" else None) for c in every} == {
        ("bias", None), ("dirichlet", 0.3)}
    assert {(c.clients, c.cohort_size) for c in every} == {(100, 100), (1000, 50), (1000, 200)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_held_out_cells_use_no_development_seed_and_the_current_rule_defaults(path):
    for c in cells(path):
        assert c.seed in {3, 4, 5} and c.seed not in DEVELOPMENT_SEEDS
        assert c.defense == "skymask" and c.skymask.select in ("gmm2", "silhouette", "spectral")
        assert c.skymask == dataclasses.replace(SkyMaskConfig(), select=c.skymask.select)  # no knob overridden
        assert c.malicious_selection == "random" and c.rounds == 10
        assert c.attack in ("none", "poisonedfl") or c.attack_params == {"spread": 1.0}
        moved = [c.data.dataset != "fmnist", c.data.partition != "bias", c.clients != 100]
        assert sum(moved) <= 1  # one axis at a time from the development base
