"""Pre-aggregators before robust rules: krum and median alone, after nnm and after bucketing.

Fashion-MNIST cnn, 100 clients, bias 0.5, paper settings, 20 % malicious. The
grid (rounds, attacks, defenses, pre-aggregators, seed) is
``benchmarks/studies/pre_aggregators.yaml``; the options override it. Cells
without a pre-aggregator (and FedAvg's, the reference row) are the attack
table's: same folder, same config hashes, reused when already run. Each cell is
``skymask-ray run --preset paper-fmnist --attack A --malicious 0.2 --defense D
--pre P --rounds R``.

    python -m benchmarks.pre_aggregators [--rounds 10] [--attacks none,ipm] [--defenses krum,median] [--seeds 0,1,2] [--table-only]

Writes benchmarks/results/pre_aggregators.md: one row per defense and
pre-aggregator, per attack the final accuracy and mean TPR/FPR over rounds.
"""

from __future__ import annotations

from benchmarks.attack_table import seeds_text
from benchmarks.common import (cell_parser, command_line, group_cells, load_study, markdown_table, run_cells,
                               write_result)

STUDY = "pre_aggregators"
PRE_KEY = "defense_params.pre"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "attack_table", "pre_aggregators.md",
                     lists=("attack", "defense", "seed"))
    args = ap.parse_args()
    pres = study.grid[PRE_KEY]
    base = {**study.base, "rounds": args.rounds}
    plain = {k: v for k, v in study.grid.items() if k != PRE_KEY}
    reference = ["fedavg"] if "fedavg" not in args.defense else []  # FedAvg without a pre-aggregator: the first row
    jobs = [job for seed in args.seed for job in (
        (base, {**plain, "attack": args.attack, "defense": reference + args.defense, "seed": [seed]}),
        (base, {**study.grid, "attack": args.attack, "defense": args.defense, "seed": [seed]}))]
    runs = group_cells(run_cells(study.preset, jobs, args.out, not args.table_only),
                       lambda c: (c.defense, c.defense_params.get("pre", "-"), c.attack))
    rows = [[d, pre, *(seeds_text(runs.get((d, pre, a), []), d, len(args.seed)) for a in args.attack)]
            for d in reference + args.defense for pre in (["-"] if d in reference else ["-", *pres])]
    table = markdown_table(["defense", "pre-aggregator", *args.attack], rows)
    print(table)
    write_result(
        args.results_md,
        f"# Pre-aggregators, {study.grid['malicious_fraction'][0]:.0%} malicious, {args.rounds} rounds, seed "
        f"{','.join(map(str, args.seed))}\n\n"
        "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings; attackers identical (`attack_params.spread` 0). "
        "Each cell: accuracy after the last round" + (" (mean ± sd over seeds) · mean TPR/FPR over rounds and "
        "seeds" if len(args.seed) > 1 else " · mean TPR/FPR over rounds") + " (positive = malicious client "
        "rejected; a client counts as accepted when a row standing for it is: with bucketing, every member of an "
        "accepted bucket). nnm: each row becomes the mean of its N - f nearest rows (Allouah et al., 2023); "
        "bucketing: the mean of shuffled buckets of 2 (Karimireddy et al., 2022). "
        f"`{command_line(__file__)}`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
