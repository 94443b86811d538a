"""Malicious-fraction sweep: final accuracy and detection of fedavg, fltrust, flame and skymask under min_max and lie.

Fashion-MNIST cnn, 100 clients, bias 0.5, paper settings, seed 0. The grid
(rounds, fractions, attacks, defenses) is ``benchmarks/studies/fraction_sweep.yaml``;
the options override it. The cells are the attack table's (same folder, same
config hashes), so cells already run for either table are reused; every cell
is ``skymask-ray run --preset paper-fmnist --attack A --malicious F --defense D
--rounds R``.

    python -m benchmarks.fraction_sweep [--rounds 10] [--fractions 0.2,0.8,0.4,0.6] [--table-only]

Writes benchmarks/results/fraction_sweep.md: per attack, one row per fraction,
per defense the final accuracy and mean TPR/FPR.
"""

from __future__ import annotations

from benchmarks.attack_table import cell_text
from benchmarks.common import cell_parser, command_line, load_study, markdown_table, run_cells, write_result

STUDY = "fraction_sweep"


def main() -> None:
    study = load_study(STUDY)
    ap = cell_parser(__doc__, __file__, study, "attack_table", "fraction_sweep.md",
                     lists=("malicious_fraction", "attack", "defense"))
    args = ap.parse_args()
    grid = {**study.grid, "malicious_fraction": args.malicious_fraction, "attack": args.attack,
            "defense": args.defense}
    base = {**study.base, "rounds": args.rounds}
    done = {(c.attack, c.malicious_fraction, c.defense): s
            for c, s in run_cells(study.preset, [(base, grid)], args.out, not args.table_only)}
    parts = []
    for attack in grid["attack"]:
        rows = [[f"{f:.0%}", *(cell_text(done.get((attack, f, d)), d) for d in grid["defense"])]
                for f in sorted(grid["malicious_fraction"])]
        parts.append(f"## {attack}\n\n" + markdown_table(["malicious", *grid["defense"]], rows))
    text = "\n\n".join(parts)
    print(text)
    write_result(
        args.results_md,
        f"# Malicious-fraction sweep, {args.rounds} rounds\n\n"
        "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings, seed 0. Each cell: accuracy after the last "
        "round · mean TPR/FPR over rounds (positive = malicious client rejected; fedavg rejects nobody). "
        f"`{command_line(__file__)}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
