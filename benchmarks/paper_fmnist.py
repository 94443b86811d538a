"""SkyMask vs FedAvg/FLTrust on Fashion-MNIST (cnn, 100 clients, bias 0.5, 30 rounds, seed 0).

The core issue's acceptance study: min_max and lie at 20 % malicious, min_max
at 80 %, against no-attack FedAvg. Cells already complete are skipped, so the
script resumes. Prints and writes ``benchmarks/results/paper_fmnist.md``.

    python benchmarks/paper_fmnist.py [--rounds 30] [--out benchmarks/results/paper_fmnist]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skymask_ray.bench import run_grid, summarize, summary_table

CELLS = [  # (attack, malicious fraction, defense)
    ("none", 0.2, "fedavg"),
    ("min_max", 0.2, "skymask"),
    ("lie", 0.2, "skymask"),
    ("min_max", 0.2, "fltrust"),
    ("lie", 0.2, "fltrust"),
    ("min_max", 0.8, "fedavg"),
    ("min_max", 0.8, "skymask"),
    ("min_max", 0.8, "fltrust"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/paper_fmnist")
    ap.add_argument("--only", help="comma-separated cell indices to run")
    args = ap.parse_args()
    out = Path(args.out)
    base = {"rounds": args.rounds, "seed": 0}
    cells = CELLS if args.only is None else [CELLS[int(i)] for i in args.only.split(",")]
    folders = []
    for attack, frac, defense in cells:
        grid = {"attack": [attack], "malicious_fraction": [frac], "defense": [defense]}
        run_grid("paper-fmnist", None, base, grid, out, echo=print)
        folders.append(out / f"fmnist-cnn-n100-m{frac:g}-{attack}-{defense}-s0")
    rows = [summarize(f) for f in folders if (f / "rounds.parquet").exists()]
    table = summary_table(rows)
    print(table)
    Path("benchmarks/results/paper_fmnist.md").write_text(
        "# Fashion-MNIST, cnn, 100 clients, bias 0.5, seed 0 (`python benchmarks/paper_fmnist.py`)\n\n"
        "acc = final test accuracy; TPR/FPR = means over rounds (positive = rejected); times are per-round means.\n\n"
        + table + "\n"
    )


if __name__ == "__main__":
    main()
