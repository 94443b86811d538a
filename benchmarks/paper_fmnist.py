"""SkyMask vs FedAvg/FLTrust on Fashion-MNIST (cnn, 100 clients, bias 0.5, 30 rounds, seed 0).

The core issue's acceptance study: min_max and lie at 20 % malicious, min_max
at 80 %, against no-attack FedAvg; its cells and rounds are
``benchmarks/studies/paper_fmnist.yaml``. Cells already complete are skipped,
so the script resumes. Prints and writes ``benchmarks/results/paper_fmnist.md``.

    python -m benchmarks.paper_fmnist [--rounds 30] [--only 0,3] [--table-only]
"""

from __future__ import annotations

from skymask_ray.bench import summary_table

from benchmarks.common import cell_parser, command_line, load_study, run_cells, write_result

STUDY = "paper_fmnist"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "paper_fmnist", "paper_fmnist.md")
    ap.add_argument("--only", help="comma-separated indices of the study's cells to run")
    args = ap.parse_args()
    grids = study.grids()
    if args.only is not None:
        grids = [grids[int(i)] for i in args.only.split(",")]
    base = {**study.base, "rounds": args.rounds}
    cells = run_cells(study.preset, [(base, g) for g in grids], args.out, not args.table_only)
    table = summary_table([s for _, s in cells if s is not None])
    print(table)
    write_result(
        args.results_md,
        f"# Fashion-MNIST, cnn, 100 clients, bias 0.5, seed 0 (`{command_line(__file__)}`)\n\n"
        "acc = final test accuracy; TPR/FPR = means over rounds (positive = rejected); times are per-round means.\n\n"
        + table + "\n"
    )


if __name__ == "__main__":
    main()
