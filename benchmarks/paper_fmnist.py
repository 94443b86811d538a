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

from benchmarks.common import cell_parser, command_line, load_study, results_path, run_cells, write_result

STUDY = "paper_fmnist"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "paper_fmnist", "paper_fmnist.md")
    ap.add_argument("--only", help="comma-separated indices of the study's cells to run")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="attackers' own noise in benign stds per coordinate (default: 0, identical attackers)")
    args = ap.parse_args()
    if args.spread < 0:
        ap.error("--spread must be >= 0")
    if args.spread:
        tag = f"paper_fmnist_spread{args.spread:g}"
        args.out = results_path(tag) if args.out == ap.get_default("out") else args.out
        args.results_md = results_path(f"{tag}.md") if args.results_md == ap.get_default("results_md") \
            else args.results_md
    grids = study.grids()
    if args.only is not None:
        grids = [grids[int(i)] for i in args.only.split(",")]
    base = {**study.base, "rounds": args.rounds}
    jobs = [({**base, "attack_params": {"spread": args.spread}} if args.spread and g["attack"] != ["none"] else base, g)
            for g in grids]
    cells = run_cells(study.preset, jobs, args.out, not args.table_only)
    table = summary_table([s for _, s in cells if s is not None])
    print(table)
    attackers = (f"each attacker adds its own noise of {args.spread:g} benign std per coordinate "
                 f"(`attack_params.spread` {args.spread:g})" if args.spread else
                 "attackers identical (`attack_params.spread` 0, the paper's setting)")
    write_result(
        args.results_md,
        f"# Fashion-MNIST, cnn, 100 clients, bias 0.5, seed 0 (`{command_line(__file__)}`)\n\n"
        f"{attackers}. acc = final test accuracy; TPR/FPR = means over rounds (positive = rejected); "
        "times are per-round means.\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
