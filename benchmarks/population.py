"""A population of 10^8 costs what 10^5 costs: set-up, round time and memory per population size at cohort 100.

Fashion-MNIST, cnn, the paper's training settings, SkyMask, min_max with 20 %
attackers (``pool`` sampling), 50 samples per client, cohort 100, 3 rounds,
seed 0. One row per population size (default 10^5, 10^6, 10^7, 10^8: seeded
clients, each drawing its 50 samples from its own seed when sampled), and a
reference row of 100 clients in full participation (a split table, 100 x 50
within the data). Each run is a fresh interpreter (``--child``) that builds
the :class:`~skymask_ray.simulation.Simulation` the CLI builds and runs it;
the sizes run in turn, ``--repeats`` times over (interleaved, so a busy spell
of a shared machine does not fall on one size only).

Reported per size (times: the median over the repeats; memory: the largest):

* set-up: seconds from the Simulation's start (data, split or seeds,
  pre-flight check, Ray start, client workers, mask trainer ready) to round 1,
  and of it the part until the data phase is done (dataset, model, pre-flight,
  root set, the clients' shards, the attackers): the part that could grow with N;
* steady round: mean ``t_round`` of rounds 2-3 (round 1 alone beside it);
* memory in use: the largest ``mem_pss_mb`` of the rows (the PSS of the
  driver, the client workers and the server's processes: shared pages, such
  as torch's libraries and the object store's, counted once);
* driver RSS: the driver's peak resident memory (VmHWM) at the end;
* the pre-flight estimate (:mod:`skymask_ray.preflight`) beside it.

Writes ``benchmarks/results/population.md`` (the runs' folders are temporary).

    python -m benchmarks.population [--populations 100000,1000000,10000000,100000000] [--cohort 100] [--rounds 3]
                                    [--repeats 2]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from types import SimpleNamespace

import click

from benchmarks.common import ROOT, command_line, comma_list, module_argv, results_path, script, write_result
from skymask_ray.markdown import markdown_table

MB = 1024**2


def run_child(population: int, cohort: int, samples: int, rounds: int, out: str) -> None:
    """One run in this interpreter; prints its figures as one JSON line."""
    from skymask_ray.experiment import build_config
    from skymask_ray.recorders import FunctionCallback
    from skymask_ray.results import read_parquet
    from skymask_ray.procfs import rss_mb
    from skymask_ray.simulation import Simulation

    over = {"clients": population, "data": {"samples_per_client": samples}, "attack": "min_max",
            "defense": "skymask", "malicious_fraction": 0.2, "rounds": rounds, "seed": 0}
    if cohort < population:
        over.update({"cohort": cohort, "malicious_sampling": "pool"})
    cfg = build_config(preset="paper-fmnist", overrides=over)
    t0 = time.perf_counter()
    phases: list[tuple[float, str]] = []
    seen = FunctionCallback(on_setup=lambda phase: phases.append((time.perf_counter() - t0, phase)))
    with Simulation(cfg, out, overwrite=True, callbacks=[seen]) as sim:
        setup = time.perf_counter() - t0
        estimate = sim.memory_estimate()
        seeded = type(sim.shards).__name__ == "SeededShards"
        rows = read_parquet(sim.run()).to_pylist()
    data_s = next(t for t, phase in phases if phase.startswith("data:"))
    print(json.dumps({"setup_s": setup, "data_s": data_s, "round_s": [r["t_round"] for r in rows],
                      "pss_mb": max(r["mem_pss_mb"] for r in rows), "driver_rss_mb": rss_mb(),
                      "estimate_mb": estimate.total / MB, "seeded": seeded, "accuracy": rows[-1]["accuracy"],
                      "malicious_in_cohort": [r["malicious_in_cohort"] for r in rows], "tpr": [r["tpr"] for r in rows],
                      "fpr": [r["fpr"] for r in rows]}), flush=True)


def run_one(population: int, cohort: int, samples: int, rounds: int) -> dict:
    """:func:`run_child` in a fresh interpreter (``--child``); its figures and the process's wall time."""
    with tempfile.TemporaryDirectory() as folder:
        cmd = [*module_argv(__file__), "--child", "--populations", str(population), "--cohort", str(cohort),
               "--samples", str(samples), "--rounds", str(rounds), "--out", f"{folder}/run"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"population {population:,} failed:\n{proc.stderr[-3000:]}")
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    fig["wall_s"] = time.perf_counter() - t0
    return fig


def summarize(repeats: list[dict]) -> dict:
    """One size's repeats as one row's figures: the median of the times, the largest memory, the rest from the
    first repeat (a run's rows do not depend on the repeat)."""
    steady = [statistics.fmean(f["round_s"][1:] or f["round_s"]) for f in repeats]
    med = {k: statistics.median(f[k] for f in repeats) for k in ("setup_s", "data_s", "wall_s")}
    return {**repeats[0], **med, "round1_s": statistics.median(f["round_s"][0] for f in repeats),
            "steady_s": statistics.median(steady), "pss_mb": max(f["pss_mb"] for f in repeats),
            "driver_rss_mb": max(f["driver_rss_mb"] for f in repeats),
            "setups": [f["setup_s"] for f in repeats]}


def _fmt(values: list) -> str:
    return ", ".join("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)


@script(__doc__)
@click.option("--populations", callback=comma_list(int), default="100000,1000000,10000000,100000000",
              help="Population sizes, comma-separated.")
@click.option("--cohort", type=int, default=100)
@click.option("--samples", type=int, default=50, help="Samples per client.")
@click.option("--rounds", type=int, default=3)
@click.option("--repeats", type=int, default=2, help="Runs of each size, interleaved.")
@click.option("--no-reference", is_flag=True, help="Skip the full-participation reference row.")
@click.option("--child", is_flag=True, hidden=True)
@click.option("--out", default=None, hidden=True)
def main(populations: list[int], cohort: int, samples: int, rounds: int, repeats: int, no_reference: bool,
         child: bool, out: str | None) -> None:
    args = SimpleNamespace(populations=populations, cohort=cohort, samples=samples, rounds=rounds, repeats=repeats,
                           no_reference=no_reference)
    if child:
        run_child(populations[0], cohort, samples, rounds, out)
        return
    runs = ([] if args.no_reference else [args.cohort]) + list(args.populations)
    label = {n: f"{n:,} (full, split table)" if n == args.cohort else f"{n:,}" for n in runs}
    done: dict[int, list[dict]] = {n: [] for n in runs}
    for rep in range(args.repeats):
        for n in runs:
            print(f"population {label[n]}, cohort {min(n, args.cohort)}, repeat {rep + 1} ...", flush=True)
            fig = run_one(n, args.cohort, args.samples, args.rounds)
            done[n].append(fig)
            print(f"  set-up {fig['setup_s']:.1f} s (data {fig['data_s']:.1f} s), rounds {_fmt(fig['round_s'])} s, "
                  f"PSS {fig['pss_mb']:.0f} MB, driver RSS {fig['driver_rss_mb']:.0f} MB "
                  f"(estimate {fig['estimate_mb']:.0f} MB)", flush=True)
    figures = {n: summarize(done[n]) for n in runs}
    rows = []
    for n in runs:
        fig = figures[n]
        rows.append([label[n], "seeded" if fig["seeded"] else "table", f"{fig['setup_s']:.1f}",
                     _fmt(fig["setups"]), f"{fig['data_s']:.2f}", f"{fig['round1_s']:.2f}", f"{fig['steady_s']:.2f}",
                     f"{fig['pss_mb']:.0f}", f"{fig['driver_rss_mb']:.0f}", f"{fig['estimate_mb']:.0f}",
                     f"{fig['accuracy']:.3f}", _fmt(fig["malicious_in_cohort"]), _fmt(fig["tpr"]), _fmt(fig["fpr"])])
    table = markdown_table(["population", "clients", "set-up s", "set-up s, each run", "of it data + population s",
                            "round 1 s", "rounds 2+ s", "memory in use MB (PSS)", "driver RSS MB",
                            "pre-flight estimate MB", "final acc", "attackers per round", "TPR", "FPR"],
                           rows, "llrlrrrrrrrlll")
    seeded = [n for n in args.populations if figures[n]["seeded"]]
    ratios = ""
    if len(seeded) > 1:
        lo, hi = figures[min(seeded)], figures[max(seeded)]
        ratios = (f"\n\n{max(seeded):,} / {min(seeded):,}: memory in use {hi['pss_mb'] / lo['pss_mb']:.2f}x, driver RSS "
                  f"{hi['driver_rss_mb'] / lo['driver_rss_mb']:.2f}x, set-up {hi['setup_s'] / lo['setup_s']:.2f}x "
                  f"(its data + population part {hi['data_s'] / lo['data_s']:.2f}x), steady round "
                  f"{hi['steady_s'] / lo['steady_s']:.2f}x (targets: memory and set-up within 1.2x).")
    text = (f"# Population size at a fixed cohort\n\n`{command_line(__file__)}`\n\n"
            f"Fashion-MNIST cnn, skymask, min_max 20 % (pool), paper training settings, cohort {args.cohort}, "
            f"{args.samples} samples per client, {args.rounds} rounds, seed 0; one fresh interpreter per run, "
            f"{args.repeats} interleaved runs per size (times: medians; memory: the largest). Timings were taken on "
            f"a shared 2-core machine (other jobs running): compare the rows with each other, not with another "
            f"machine's.\n\n{table}{ratios}\n")
    print(text)
    write_result(results_path("population.md"), text)


if __name__ == "__main__":
    main()
