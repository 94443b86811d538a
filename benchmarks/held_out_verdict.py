"""Which selection rule the held-out set supports as SkyMask's default (issue 32, protocol rule 2).

Reads the held-out study's rows (benchmarks/results/held_out.parquet), averages each run's TPR and FPR
over its rounds and then over the seeds of each condition (dataset, partition, population, attack,
fraction), and checks every rule against the targets: mean TPR at least ``--tpr`` (conditions with an
attack) and mean FPR at most ``--fpr``. The decision rule is issue 32's: a rule replaces the paper's
``gmm2`` as the default only if it meets the targets where ``gmm2`` does not and nowhere falls short
where ``gmm2`` meets them. It was written down after the table had been seen (the table is published
as it came out; this file only counts it). Writes benchmarks/results/held_out_verdict.md, or
STEM_verdict.md for ``--rows`` STEM.parquet (e.g. a second held-out set's rows).

    python -m benchmarks.held_out_verdict [--tpr 0.95] [--fpr 0.05] [--rows FILE] [--set development]
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from benchmarks.common import command_line, read_table, results_path, script, write_result
from skymask_ray.markdown import markdown_table
from skymask_ray.tables import run_summaries

ROWS = results_path("held_out.parquet")
CONDITION = ["data.dataset", "data.partition", "data.alpha", "clients", "cohort", "attack", "malicious_fraction"]
PAPER = "gmm2"


def conditions(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean TPR/FPR over the seeds of each (condition, rule), the condition also as one phrase
    (:func:`condition_text`): a run counts once, its rounds averaged first."""
    if not {"cell", "round", "config", "tpr", "fpr"} <= set(rows.columns):
        raise click.ClickException("these are not a study's result rows (no cell, round, config, tpr or fpr column)")
    runs = run_summaries(rows)
    missing = [k for k in [*CONDITION, "skymask.select"] if k not in runs]
    if missing or set(runs["defense"]) != {"skymask"}:
        raise click.ClickException("not a selection-rule study: every run must be SkyMask's, with "
                                   + ", ".join([*CONDITION, "skymask.select"]) + " recorded")
    table = (runs.groupby([*CONDITION, "skymask.select"], dropna=False)
             .agg(tpr=("tpr", "mean"), fpr=("fpr", "mean"), seeds=("seed", "nunique")).reset_index())
    return table.assign(condition=table.apply(condition_text, axis=1))


def meets(frame: pd.DataFrame, tpr: float, fpr: float) -> pd.Series:
    """Whether each condition meets the targets; no attack: FPR only."""
    return ((frame["attack"] == "none") | (frame["tpr"] >= tpr)) & (frame["fpr"] <= fpr)


def verdict(table: pd.DataFrame) -> tuple[list[list[str]], str]:
    """Each rule's conditions met, where it meets them and the paper's rule does not (and the reverse), and
    the default the decision rule gives."""
    ok = table.pivot(index="condition", columns="skymask.select", values="ok")
    if ok.isna().any().any():
        raise click.ClickException("some condition lacks a rule's runs: the held-out rows are incomplete")
    if PAPER not in ok:
        raise click.ClickException(f"the rows hold no {PAPER} runs to compare against")
    summary, better = [], {}
    for rule in ok.columns:
        mine, paper = ok[rule].astype(bool), ok[PAPER].astype(bool)
        wins, losses = int((mine & ~paper).sum()), int((~mine & paper).sum())
        summary.append([rule, f"{int(mine.sum())} of {len(mine)}", str(wins), str(losses),
                        f"{table.loc[table['skymask.select'] == rule, 'fpr'].max():.3f}"])
        if rule != PAPER and wins > 0 and losses == 0:
            better[rule] = int(mine.sum())
    if better:
        best = max(better, key=better.get)
        return summary, f"Default: {best} (meets the targets wherever {PAPER} does, and in {better[best]} conditions)."
    return summary, f"Default: {PAPER}, unchanged (no rule meets the targets wherever {PAPER} does and more)."


def condition_text(row: pd.Series) -> str:
    """A condition as one phrase: dataset, partition, population, attack and fraction."""
    cohort = "" if pd.isna(row["cohort"]) or row["cohort"] >= row["clients"] else f", cohorts of {row['cohort']:g}"
    alpha = "" if pd.isna(row["data.alpha"]) else f" {row['data.alpha']:g}"
    return (f"{row['data.dataset']} {row['data.partition']}{alpha}, N = {row['clients']:g}{cohort}, {row['attack']} "
            f"{100 * row['malicious_fraction']:g} %")


@script(__doc__)
@click.option("--tpr", type=click.FloatRange(0, 1), default=0.95, help="Least mean TPR a condition with an attack needs.")
@click.option("--fpr", type=click.FloatRange(0, 1), default=0.05, help="Largest mean FPR any condition may have.")
@click.option("--rows", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=ROWS)
@click.option("--set", "which", type=click.Choice(["held-out", "development"]), default="held-out",
              help="The protocol's set the rows come from, named in the output's first line.")
def main(tpr: float, fpr: float, rows: Path, which: str) -> None:
    table = conditions(read_table(rows).to_pandas())
    table["ok"] = meets(table, tpr, fpr)
    summary, decision = verdict(table)
    low, high = table["seeds"].min(), table["seeds"].max()
    seeds = f"{low}" if low == high else f"{low}-{high}"
    misses = table[~table["ok"]].sort_values([*CONDITION, "skymask.select"])
    text = (f"# The selection rules against the targets: {rows.name}\n\n"
            f"{which.capitalize()} set (benchmarks/PROTOCOL.md). Made by `{command_line(__file__)}` from {rows.name}: "
            f"{seeds} seeds a condition, each run's rounds averaged, then its "
            f"seeds. Targets: mean TPR >= {tpr:g} where there is an attack, mean FPR <= {fpr:g}.\n\n"
            + markdown_table(["rule", "conditions meeting the targets", f"met where {PAPER} is not",
                              f"missed where {PAPER} meets them", "largest mean FPR"], summary)
            + f"\n\n{decision}\n\nEvery condition a rule misses:\n\n"
            + markdown_table(["condition", "rule", "mean TPR", "mean FPR"],
                             [[r["condition"], r["skymask.select"], "-" if r["attack"] == "none" else f"{r['tpr']:.3f}",
                               f"{r['fpr']:.3f}"] for _, r in misses.iterrows()]) + "\n")
    print(write_result(results_path(f"{rows.stem}_verdict.md"), text))


if __name__ == "__main__":
    main()
