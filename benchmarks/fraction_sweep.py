"""Malicious-fraction sweep: final accuracy and detection of fedavg, fltrust, flame and skymask under min_max and lie.

Fashion-MNIST cnn, 100 clients, bias 0.5, paper settings, seed 0, fractions
0.2 / 0.4 / 0.6 / 0.8. The cells are the attack table's (same folder, same
config hashes), so cells already run for either table are reused; every cell
is ``skymask-ray run --preset paper-fmnist --attack A --malicious F --defense D
--rounds R``.

    python benchmarks/fraction_sweep.py [--rounds 10] [--table-only]

Writes benchmarks/results/fraction_sweep.md: per attack, one row per fraction,
per defense the final accuracy and mean TPR/FPR.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from attack_table import cell_parser, cell_text  # noqa: E402  (benchmarks/ is not a package)

from skymask_ray.bench import cell_done, cell_name, expand_grid, run_grid, summarize  # noqa: E402


def main() -> None:
    ap = cell_parser(__doc__, "min_max,lie", "fedavg,fltrust,flame,skymask", "benchmarks/results/fraction_sweep.md")
    ap.add_argument("--fractions", default="0.2,0.8,0.4,0.6", help="run in this order (extremes first)")
    args = ap.parse_args()
    grid = {"malicious_fraction": [float(f) for f in args.fractions.split(",")],
            "attack": args.attacks.split(","), "defense": args.defenses.split(",")}
    base = {"rounds": args.rounds}
    out = Path(args.out)
    if not args.table_only:
        run_grid("paper-fmnist", None, base, grid, out, echo=print)
    done = {(c.attack, c.malicious_fraction, c.defense): summarize(out / cell_name(c))
            for c in expand_grid("paper-fmnist", None, base, grid) if cell_done(c, out / cell_name(c))}
    parts = []
    for attack in grid["attack"]:
        lines = [f"## {attack}", "", "| malicious | " + " | ".join(grid["defense"]) + " |",
                 "|---" * (len(grid["defense"]) + 1) + "|"]
        for f in sorted(grid["malicious_fraction"]):
            vals = [cell_text(done.get((attack, f, d)), d) for d in grid["defense"]]
            lines.append(f"| {f:.0%} | " + " | ".join(vals) + " |")
        parts.append("\n".join(lines))
    text = "\n\n".join(parts)
    print(text)
    Path(args.results_md).write_text(
        f"# Malicious-fraction sweep, {args.rounds} rounds\n\n"
        "Fashion-MNIST, cnn, 100 clients, bias 0.5, paper settings, seed 0. Each cell: accuracy after the last "
        "round · mean TPR/FPR over rounds (positive = malicious client rejected; fedavg rejects nobody). "
        f"`python {' '.join(a for a in sys.argv if a != '--table-only')}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
