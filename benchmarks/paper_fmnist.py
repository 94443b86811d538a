"""SkyMask vs FedAvg/FLTrust on Fashion-MNIST (cnn, 100 clients, bias 0.5, 30 rounds).

The core issue's acceptance study: min_max and lie at 20 % malicious, min_max
at 80 %, against no-attack FedAvg; its cells and rounds are
``benchmarks/studies/paper_fmnist.yaml``. ``--seeds`` runs the cells once per
seed, each seed's cells before the next seed's. Cells already complete are
skipped, so the script resumes. Prints and writes
``benchmarks/results/paper_fmnist.md``: with several seeds, one row per cell
over its seeds (mean ± sd), then the runs one by one.
``--spread S`` gives every attacker its own noise (``attack_params.spread``, S benign standard
deviations per coordinate; 0, the paper's setting, is the default) and keeps its cells and table
apart: ``paper_fmnist_spread<S>/`` and ``paper_fmnist_spread<S>.md``.

    python -m benchmarks.paper_fmnist [--rounds 30] [--seeds 0,1,2] [--only 0,3] [--spread 1] [--table-only]
"""

from __future__ import annotations

from typing import Any

from skymask_ray.bench import summary_table

from benchmarks.attack_table import rates
from benchmarks.common import (add_spread_option, apply_spread, attackers_text, cell_parser, command_line, load_study,
                               markdown_table, mean_sd, run_cells, spread_params, write_result)

STUDY = "paper_fmnist"


def seeds_table(runs: list[dict[str, Any]], seeds: int) -> str:
    """One row per (malicious fraction, attack, defense), in the runs' order: the seeds complete, final
    accuracy and mean TPR/FPR over rounds as mean ± sd over those seeds (fedavg rejects nobody: no TPR/FPR)."""
    by: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for s in runs:
        by.setdefault((s["malicious_fraction"], s["attack"], s["defense"]), []).append(s)
    rows = []
    for (frac, attack, defense), cells in by.items():
        got = [r for c in cells if (r := rates(c, defense)) is not None]
        rows.append([f"{frac:.0%}", attack, defense, f"{len(cells)} of {seeds}",
                     mean_sd([c["accuracy"] for c in cells]), *(mean_sd([r[i] for r in got]) for i in (0, 1))])
    return markdown_table(["malicious", "attack", "defense", "seeds", "final accuracy", "mean TPR", "mean FPR"],
                          rows, "lllrrrr")


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "paper_fmnist", "paper_fmnist.md", lists=("seed",))
    ap.add_argument("--only", help="comma-separated indices of the study's cells to run")
    add_spread_option(ap)
    args = ap.parse_args()
    apply_spread(ap, args, STUDY)
    grids = study.grids()
    if args.only is not None:
        try:
            picked = [int(i) for i in args.only.split(",")]
            if not all(0 <= i < len(grids) for i in picked):
                raise ValueError
        except ValueError:
            ap.error(f"--only takes indices 0-{len(grids) - 1} of the study's cells, comma-separated")
        grids = [grids[i] for i in picked]
    base = {**study.base, "rounds": args.rounds}
    jobs = [({**base, "seed": seed, **(spread_params(args.spread) if g["attack"] != ["none"] else {})}, g)
            for seed in args.seed for g in grids]
    runs = [s for _, s in run_cells(study.preset, jobs, args.out, not args.table_only) if s is not None]
    seeds = ",".join(map(str, args.seed))
    text = (f"# Fashion-MNIST, cnn, 100 clients, bias 0.5, {args.rounds} rounds, seed{'s' if len(args.seed) > 1 else ''} "
            f"{seeds} (`{command_line(__file__)}`)\n\n"
            f"{attackers_text(args.spread)}. acc = final test accuracy; TPR/FPR = means over rounds (positive = "
            "rejected); times are per-round means.\n\n")
    if len(args.seed) > 1:
        text += "Over seeds (mean ± sd):\n\n" + seeds_table(runs, len(args.seed)) + "\n\nEach run:\n\n"
    text += summary_table(runs) + "\n"
    print(text)
    write_result(args.results_md, text)


if __name__ == "__main__":
    main()
