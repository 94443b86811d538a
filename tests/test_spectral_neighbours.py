"""The development-Gram analysis behind spectral's neighbour count (benchmarks/spectral_neighbours.py)."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.spectral_neighbours import RULES, SHIPPED, Round, Score, attackers_near, choose, symmetric


def test_upper_triangles_rebuild_the_symmetric_gram():
    b = (np.random.default_rng(0).random((7, 50)) < 0.5).astype(np.float64)
    gram = b @ b.T
    np.testing.assert_array_equal(symmetric([gram[j, j:].tolist() for j in range(7)]), gram)


def test_attackers_near_is_one_for_a_tight_group_and_low_for_scattered_attackers():
    rng = np.random.default_rng(1)
    honest = (rng.random((30, 400)) < 0.5).astype(np.float64)
    base = (rng.random(400) < 0.5).astype(np.float64)
    tight = np.stack([np.where(rng.random(400) < 0.02, 1 - base, base) for _ in range(8)])
    masks = np.vstack([base[None], tight, honest])  # row 0 stands for the server
    malicious = np.r_[np.ones(8, bool), np.zeros(30, bool)]
    assert attackers_near(Round("lie", "N = 38", 0, 1, masks @ masks.T, malicious)) == 1.0
    scattered = np.vstack([base[None], (rng.random((8, 400)) < 0.5).astype(np.float64), honest])
    assert attackers_near(Round("lie", "N = 38", 0, 1, scattered @ scattered.T, malicious)) < 0.5


def _rows(tpr: dict[str, float], fpr: dict[str, float]) -> list[Score]:
    rows = []
    for name in RULES:
        rows.append(Score("lie", "N = 100", 100, name, 30, tpr.get(name, 0.5), 0.01, True))
        rows.append(Score("lie", "N = 100", 25, name, 300, 0.0, 0.01, False))  # a sub-sample: not in the TPR mean
        rows.append(Score("none", "N = 100", 100, name, 30, math.nan, fpr.get(name, 0.01), True))
    return rows


def test_choice_keeps_the_shipped_count_unless_a_qualifying_rule_beats_it_by_more_than_005():
    assert SHIPPED == "ceil(0.15 K)" and SHIPPED in RULES
    _, verdict = choose(_rows({"ceil(0.1 K)": 0.54}, {}))
    assert verdict.startswith("Chosen: ceil(0.15 K), unchanged")
    _, verdict = choose(_rows({"ceil(0.1 K)": 0.9}, {}))
    assert verdict == "Chosen: ceil(0.1 K)."
    _, verdict = choose(_rows({"ceil(0.1 K)": 0.9}, {"ceil(0.1 K)": 0.2}))  # better TPR, FPR over the bound
    assert verdict.startswith("Chosen: ceil(0.15 K), unchanged")


def test_choice_decides_on_unrounded_means():
    _, verdict = choose(_rows({"ceil(0.1 K)": 0.9}, {"ceil(0.1 K)": 0.0504}))  # prints as 0.050, yet over 0.05
    assert verdict.startswith("Chosen: ceil(0.15 K), unchanged")
    _, verdict = choose(_rows({"ceil(0.1 K)": 0.5504}, {}))  # prints as 0.55: 0.0504 over the shipped 0.5
    assert verdict == "Chosen: ceil(0.1 K)."


def test_score_rows_format_tpr_to_two_decimals_and_no_attack_as_a_dash():
    assert Score("lie", "N = 100", 100, SHIPPED, 30, 0.6789, 0.01234, True).row() == \
        ["lie", "N = 100", "100", SHIPPED, "30", "0.68", "0.012"]
    assert Score("none", "N = 100", 25, SHIPPED, 300, math.nan, 0.0, False).row()[5] == "-"
