"""The held-out verdict (benchmarks/held_out_verdict.py): targets per condition and the default it gives."""

from __future__ import annotations

import math

import click
import pandas as pd
import pytest

from benchmarks.common import read_table
from benchmarks.held_out_verdict import CONDITION, ROWS, condition_text, conditions, meets, verdict


def _table(results: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """Rules' (TPR, FPR) over the same conditions: lie at 20 % on N = 100, 200, ...; a NaN TPR means no attack."""
    rows = []
    for rule, scores in results.items():
        for i, (tpr, fpr) in enumerate(scores):
            rows.append({"data.dataset": "fmnist", "data.partition": "bias", "data.alpha": math.nan, "clients": 100 * (i + 1), "cohort": math.nan,
                         "attack": "none" if math.isnan(tpr) else "lie", "malicious_fraction": 0.2,
                         "skymask.select": rule, "tpr": tpr, "fpr": fpr, "seeds": 3})
    table = pd.DataFrame(rows)
    table["condition"] = table.apply(condition_text, axis=1)
    table["ok"] = meets(table, 0.95, 0.05)
    return table


def test_no_attack_is_judged_on_fpr_alone_and_both_bounds_are_inclusive():
    table = _table({"gmm2": [(math.nan, 0.05), (0.95, 0.05), (0.949, 0.0), (1.0, 0.051)]})
    assert table["ok"].tolist() == [True, True, False, False]


def test_a_rule_becomes_the_default_only_if_it_meets_the_targets_wherever_gmm2_does_and_more():
    better = _table({"gmm2": [(math.nan, 0.3), (1.0, 0.0)], "spectral": [(math.nan, 0.01), (1.0, 0.0)]})
    summary, decision = verdict(better)
    assert decision.startswith("Default: spectral")
    assert ["spectral", "2 of 2", "1", "0", "0.010"] in summary
    two = _table({"gmm2": [(math.nan, 0.3), (0.5, 0.0)], "silhouette": [(math.nan, 0.01), (0.5, 0.0)],
                  "spectral": [(math.nan, 0.01), (1.0, 0.0)]})
    assert verdict(two)[1].startswith("Default: spectral (")  # both dominate: the one meeting more targets
    traded = _table({"gmm2": [(math.nan, 0.3), (1.0, 0.0)], "spectral": [(math.nan, 0.01), (0.07, 0.0)]})
    assert verdict(traded)[1].startswith("Default: gmm2, unchanged")


def test_missing_runs_are_an_error_not_a_miss():
    table = _table({"gmm2": [(1.0, 0.0), (1.0, 0.0)], "spectral": [(1.0, 0.0)]})
    with pytest.raises(click.ClickException, match="incomplete"):
        verdict(table)
    with pytest.raises(click.ClickException, match="no gmm2"):
        verdict(_table({"spectral": [(1.0, 0.0)]}))


def test_committed_held_out_rows_hold_every_condition_for_every_rule_over_three_seeds():
    table = conditions(read_table(ROWS).to_pandas())
    assert len(table) == 27 * 3 and set(table["skymask.select"]) == {"gmm2", "silhouette", "spectral"}
    assert (table["seeds"] == 3).all() and not table.duplicated([*CONDITION, "skymask.select"]).any()
