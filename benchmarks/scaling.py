"""Round time and memory as the client count and the malicious fraction grow (SkyMask, min_max).

Fashion-MNIST, cnn, bias 0.5, paper settings; each client gets 60,000/N
samples (12 at N = 5000). Two sweeps, one round per cell (round 1 includes no
start-up: actors are created before it):

* clients N in --clients at malicious fraction 0.2;
* malicious fraction in --fractions at N = --fraction-clients (0 = no attacker:
  every client trains, the baseline for the model-poisoning client phase).

Every cell is the user's command, ``skymask-ray bench --preset paper-fmnist
--clients N --malicious f --attack min_max --defense skymask --rounds 1``, run
as a subprocess while this machine's used memory is sampled
(:func:`benchmarks.common.run_sampled`): ``host peak MB`` is what the whole
run added (Ray's daemons and object store included, shared pages counted once), beside the
summed per-process peak RSS of the Parquet rows. Cells already complete are
skipped (resume). Writes the cells' Parquet files under --out, ``scaling.md``
and ``scaling.parquet`` (one row per cell) and the report's PNG plots.

    python -m benchmarks.scaling [--clients 100,250,500,1000,2000,5000] [--fractions 0,0.2,0.4,0.6,0.8]
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from skymask_ray.bench import cell_done, cell_name, expand_grid, summarize, summary_table
from skymask_ray.report import make_report

from benchmarks.common import (
    comma_list,
    invocation,
    markdown_table,
    results_path,
    run_sampled,
    script_parser,
    write_result,
)


def run_cell(n: int, f: float, rounds: int, out: Path) -> dict:
    """One cell through the CLI, with its host memory (kept in host_memory.json beside its rows)."""
    base = {"rounds": rounds, "attack": "min_max", "defense": "skymask"}
    (cfg,) = expand_grid("paper-fmnist", None, base, {"clients": [n], "malicious_fraction": [f]})
    folder = out / cell_name(cfg)
    mem_file = folder / "host_memory.json"
    if not (cell_done(cfg, folder) and mem_file.exists()):
        cmd = ["skymask-ray", "bench", "--preset", "paper-fmnist", "--clients", str(n), "--malicious", str(f),
               "--attack", "min_max", "--defense", "skymask", "--rounds", str(rounds), "--out", str(out)]
        print(" ".join(cmd), flush=True)
        (folder / "rounds.parquet").unlink(missing_ok=True)
        mem = run_sampled(cmd)
        mem_file.write_text(json.dumps(mem, indent=1))
    row = summarize(folder)
    row.update(json.loads(mem_file.read_text()))
    return row


def main() -> None:
    ap = script_parser(__doc__, __file__)
    ap.add_argument("--clients", type=comma_list(int), default=[100, 250, 500, 1000, 2000, 5000])
    ap.add_argument("--fractions", type=comma_list(float), default=[0, 0.2, 0.4, 0.6, 0.8])
    ap.add_argument("--fraction-clients", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=results_path("scaling"))
    args = ap.parse_args()
    out = args.out
    cells = [(n, 0.2) for n in args.clients] + [(args.fraction_clients, f) for f in args.fractions if f != 0.2]
    rows = [run_cell(n, f, args.rounds, out) for n, f in cells]
    table = summary_table(rows)
    mem = markdown_table(
        ["N", "mal", "host peak MB", "summed peak RSS MB", "run wall s (Ray start to exit)"],
        [[r["clients"], f"{r['malicious_fraction']:g}", f"{r['host_peak_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
          f"{r['wall_s']:.0f}"] for r in rows])
    print(table)
    print(mem)
    pq.write_table(pa.Table.from_pylist(rows), out / "scaling.parquet")
    write_result(
        out / "scaling.md",
        "# Scaling: SkyMask under min_max, Fashion-MNIST cnn, one round per cell "
        f"(`{invocation(__file__)}`)\n\n"
        "Times are seconds of that round; peak MB is the summed peak RSS of driver, client workers and trainer "
        "(a shared page counts in every process that maps it).\n\n" + table + "\n\n"
        "## Memory of the whole command\n\nHost peak MB: this machine's used memory (MemTotal - MemAvailable) "
        "during `skymask-ray bench ...`, minus before it (Ray daemons and object store included, shared pages "
        "once).\n\n" + mem + "\n")
    for p in make_report([out], out):
        print("wrote", p)


if __name__ == "__main__":
    main()
