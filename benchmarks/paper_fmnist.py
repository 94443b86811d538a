"""SkyMask vs FedAvg/FLTrust on Fashion-MNIST (cnn, 100 clients, bias 0.5, 30 rounds, seed 0).

The core issue's acceptance study: min_max and lie at 20 % malicious, min_max
at 80 %, against no-attack FedAvg; its cells and rounds are
``benchmarks/studies/paper_fmnist.yaml``. Cells already complete are skipped,
so the script resumes. Prints and writes ``benchmarks/results/paper_fmnist.md``.
``--spread S`` gives every attacker its own noise (``attack_params.spread``, S benign standard
deviations per coordinate; 0, the paper's setting, is the default) and keeps its cells and table
apart: ``paper_fmnist_spread<S>/`` and ``paper_fmnist_spread<S>.md``.

    python -m benchmarks.paper_fmnist [--rounds 30] [--only 0,3] [--spread 1] [--table-only]
"""

from __future__ import annotations

from skymask_ray.bench import summary_table

from benchmarks.common import (add_spread_option, apply_spread, attackers_text, cell_parser, command_line, load_study,
                               run_cells, spread_params, write_result)

STUDY = "paper_fmnist"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "paper_fmnist", "paper_fmnist.md")
    ap.add_argument("--only", help="comma-separated indices of the study's cells to run")
    add_spread_option(ap)
    args = ap.parse_args()
    apply_spread(ap, args, STUDY)
    grids = study.grids()
    if args.only is not None:
        grids = [grids[int(i)] for i in args.only.split(",")]
    base = {**study.base, "rounds": args.rounds}
    jobs = [({**base, **spread_params(args.spread)} if g["attack"] != ["none"] else base, g) for g in grids]
    cells = run_cells(study.preset, jobs, args.out, not args.table_only)
    table = summary_table([s for _, s in cells if s is not None])
    print(table)
    write_result(
        args.results_md,
        f"# Fashion-MNIST, cnn, 100 clients, bias 0.5, seed 0 (`{command_line(__file__)}`)\n\n"
        f"{attackers_text(args.spread)}. acc = final test accuracy; TPR/FPR = means over rounds (positive = rejected); "
        "times are per-round means.\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
