"""Round time and memory as the client count and the malicious fraction grow: the scaling study, with host memory.

The cells are ``benchmarks/studies/scaling.yaml``'s (SkyMask under min_max, one
round each). Each runs as the user's command, ``skymask-ray bench --grid
benchmarks/studies/scaling.yaml --only clients=N --only malicious_fraction=F``,
in a subprocess while this machine's used memory is sampled
(:func:`benchmarks.common.run_sampled`): ``host_peak_mb`` is what the whole
command added (Ray's daemons and object store included, shared pages counted
once), ``wall_s`` its wall time. Cells already complete with their host memory
are skipped (resume). Writes the study's rows, with those columns added, to
``benchmarks/results/scaling.parquet``; ``skymask-ray report
benchmarks/studies/scaling.yaml --table`` renders its table.

    python -m benchmarks.scaling [--out results/scaling] [--only clients=100,500]
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pyarrow as pa

from skymask_ray.bench import cell_done
from skymask_ray.results import write_rows
from skymask_ray.storage import atomic_write_text
from skymask_ray.study import cell_rows, concat_rows, load_study, parse_only

from benchmarks.common import ROOT, STUDIES, results_path, run_sampled, script

HOST_MEMORY = "_host_memory.json"  # beside a cell's rows; "_": Parquet readers skip it
STUDY = STUDIES / "scaling.yaml"


@script(__doc__)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/scaling"),
              help="Study folder of the cells.")
@click.option("--only", multiple=True, metavar="KEY=V1,V2", help="Passed to skymask-ray bench: run only these cells.")
def main(out: Path, only: tuple[str, ...]) -> None:
    study = load_study(STUDY)
    cells = study.expand()
    picked = {c.name for c in study.narrow(parse_only(only))}
    out = out.resolve()
    tables = []
    for cell in cells:
        folder = out / cell.name
        mem_file = folder / HOST_MEMORY
        if cell.name in picked and not (cell_done(cell.config, folder) and mem_file.exists()):
            wanted = [f"clients={cell.config.clients}", f"malicious_fraction={cell.config.malicious_fraction:g}"]
            cmd = [shutil.which("skymask-ray") or "skymask-ray", "bench", "--grid", str(STUDY), "--out", str(out),
                   *(a for w in wanted for a in ("--only", w))]
            print(" ".join(cmd), flush=True)
            (folder / "rounds.parquet").unlink(missing_ok=True)  # measure the whole command, not a skipped cell
            mem = run_sampled(cmd)
            atomic_write_text(mem_file, json.dumps(mem, indent=1))
        rows = cell_rows(folder, cell.name) if mem_file.exists() else None
        if rows is None:
            continue
        mem = json.loads(mem_file.read_text())
        for key in ("host_peak_mb", "host_baseline_mb", "wall_s"):
            rows = rows.append_column(key, pa.array([float(mem[key])] * rows.num_rows))
        tables.append(rows)
    path = write_rows(concat_rows(tables), results_path("scaling.parquet"))
    print(f"wrote {path.relative_to(ROOT)} ({len(tables)} of {len(cells)} cells)")


if __name__ == "__main__":
    main()
