"""Round time and memory as the client count and the malicious fraction grow (SkyMask, min_max).

Fashion-MNIST, cnn, bias 0.5, paper settings; each client gets 60,000/N
samples (12 at N = 5000). Two sweeps, one round per cell (round 1 includes no
start-up: actors are created before it):

* clients N in --clients at malicious fraction 0.2;
* malicious fraction in --fractions at N = --fraction-clients.

Cells already complete are skipped (resume). Writes the cells' Parquet files
under --out, ``scaling.md`` (table) and the report's PNG plots (round time and
memory vs client count) into benchmarks/results/scaling/.

    python benchmarks/scaling.py [--clients 100,250,500,1000,2000,5000] [--fractions 0.2,0.4,0.6,0.8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skymask_ray.bench import run_grid, summary_table
from skymask_ray.report import make_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="100,250,500,1000,2000,5000")
    ap.add_argument("--fractions", default="0.2,0.4,0.6,0.8")
    ap.add_argument("--fraction-clients", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/scaling")
    args = ap.parse_args()
    out = Path(args.out)
    base = {"rounds": args.rounds, "attack": "min_max", "defense": "skymask"}
    rows = run_grid("paper-fmnist", None, base, {"clients": [int(c) for c in args.clients.split(",")],
                                                  "malicious_fraction": [0.2]}, out, echo=print)
    rows += run_grid("paper-fmnist", None, base, {"clients": [args.fraction_clients],
                                                   "malicious_fraction": [float(f) for f in args.fractions.split(",")
                                                                          if float(f) != 0.2]}, out, echo=print)
    table = summary_table(rows)
    print(table)
    (out / "scaling.md").write_text(
        "# Scaling: SkyMask under min_max, Fashion-MNIST cnn, one round per cell (`python benchmarks/scaling.py`)\n\n"
        "Times are seconds of that round; peak MB is the summed peak RSS of driver, client workers and trainer.\n\n"
        + table + "\n")
    for p in make_report([out], out):
        print("wrote", p)


if __name__ == "__main__":
    main()
