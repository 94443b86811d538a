"""A cross-device population costs what its cohort costs: 500 clients in full vs 100,000 with a cohort of 500.

Fashion-MNIST, cnn, SkyMask, min_max with 20 % attackers (``pool`` sampling),
the paper's training settings, 3 rounds, seed 0. Two runs, one after the other
in one invocation, each the user's command run as a subprocess while this
machine's used memory is sampled (:func:`benchmarks.common.run_sampled`):

* population 500, full participation (every client every round; 60,000/500
  samples each);
* population 100,000, cohort 500, 50 samples per client drawn with
  replacement (``--samples-per-client 50``: 100,000 x 50 exceeds the data).

Reported: whole-process wall time, the peak host memory each run added
(Ray's daemons and object store included, shared pages counted once), the
mean round time over rounds 2-3 (steady state) and round 1, and the ratios.
Writes ``benchmarks/results/population.md`` and the two runs' folders.

    python -m benchmarks.population [--population 100000] [--cohort 500] [--rounds 3]
"""

from __future__ import annotations

import shutil
import sys
from types import SimpleNamespace

import click

from skymask_ray.markdown import markdown_table
from skymask_ray.results import read_parquet

from benchmarks.common import command_line, results_path, run_sampled, script, write_result


@script(__doc__)
@click.option("--population", type=int, default=100_000)
@click.option("--cohort", type=int, default=500)
@click.option("--samples", type=int, default=50, help="Samples per client of the large population.")
@click.option("--rounds", type=int, default=3)
def main(population: int, cohort: int, samples: int, rounds: int) -> None:
    args = SimpleNamespace(population=population, cohort=cohort, samples=samples, rounds=rounds)
    common = ["--preset", "paper-fmnist", "--attack", "min_max", "--defense", "skymask", "--malicious", "0.2",
              "--rounds", str(args.rounds), "--seed", "0", "--overwrite"]
    runs = {
        f"full {args.cohort}": ["--clients", str(args.cohort)],
        f"population {args.population:,}, cohort {args.cohort}": [
            "--clients", str(args.population), "--cohort", str(args.cohort), "--malicious-sampling", "pool",
            "--samples-per-client", str(args.samples)],
    }
    out = results_path("population")
    rows, figures = [], {}
    for i, (label, extra) in enumerate(runs.items()):
        folder = out / f"run{i}"
        if folder.exists():
            shutil.rmtree(folder)
        cmd = [sys.executable, "-m", "skymask_ray.cli", "run", *common, *extra, "--out", str(folder)]
        print(f"{label}: {' '.join(cmd[2:])}", flush=True)
        sampled = run_sampled(cmd)
        rounds = read_parquet(folder / "rounds.parquet").to_pylist()
        steady = [r["t_round"] for r in rounds[1:]] or [rounds[0]["t_round"]]
        fig = {"wall_s": sampled["wall_s"], "host_mb": sampled["host_peak_mb"], "round1_s": rounds[0]["t_round"],
               "steady_s": sum(steady) / len(steady), "acc": rounds[-1]["accuracy"],
               "mal": [r["malicious_in_cohort"] for r in rounds], "tpr": [r["tpr"] for r in rounds],
               "fpr": [r["fpr"] for r in rounds]}
        figures[label] = fig
        print(f"  wall {fig['wall_s']:.1f} s, host +{fig['host_mb']:.0f} MB, round 1 {fig['round1_s']:.2f} s, "
              f"rounds 2+ {fig['steady_s']:.2f} s, attackers per cohort {fig['mal']}", flush=True)
        rows.append([label, f"{fig['wall_s']:.1f}", f"{fig['host_mb']:.0f}", f"{fig['round1_s']:.2f}",
                     f"{fig['steady_s']:.2f}", f"{fig['acc']:.3f}", ", ".join(map(str, fig["mal"])),
                     ", ".join("-" if v is None else f"{v:.2f}" for v in fig["tpr"]),
                     ", ".join("-" if v is None else f"{v:.2f}" for v in fig["fpr"])])
    small, big = figures.values()
    mem, steady = big["host_mb"] / small["host_mb"], big["steady_s"] / small["steady_s"]
    table = markdown_table(["run", "wall s", "host MB added", "round 1 s", "rounds 2+ s", "final acc",
                            "attackers per round", "TPR", "FPR"], rows, "lrrrrrlll")
    text = (f"# Population vs cohort\n\n`{command_line(__file__)}`\n\n"
            f"Fashion-MNIST cnn, skymask, min_max 20 % (pool), paper training settings, {args.rounds} rounds, "
            f"seed 0; both runs in one invocation on this machine (2 cores).\n\n{table}\n\n"
            f"Ratios (population / full): host memory {mem:.2f}x (target <= 1.5x), steady round time "
            f"{steady:.2f}x (target <= 1.3x), round 1 {big['round1_s'] / small['round1_s']:.2f}x, "
            f"wall {big['wall_s'] / small['wall_s']:.2f}x.\n")
    print(text)
    write_result(results_path("population.md"), text)


if __name__ == "__main__":
    main()
