"""Cross-device throughput on workload P1: skymask-ray vs Flower, whole process and steady-state round time.

P1 is shaped on pfl-research's CIFAR-10 benchmark (1000 clients x 50 samples,
50 clients per round, 1 local epoch, batch 10), on Fashion-MNIST with the
paper's cnn: FedAvg, no attack, 50 rounds, centralised evaluation on the
10,000-sample test set every 10 rounds (rounds 10, 20, ..., 50).

* skymask-ray: the CLI, as a user runs it (:func:`skymask_flags`), in a fresh
  interpreter; one client worker per core, one torch thread each.
* Flower: ``benchmarks/flower_p1.py`` under ``benchmarks/.flower-venv``
  (``flwr[simulation]``, created on first use as ``benchmarks.w1_throughput``
  does): ``run_simulation`` with the Ray backend, 1 CPU per client actor,
  ``FedAvg(fraction_fit=0.05)``, ``evaluate_fn`` on the same test set at the
  same rounds.

Both sides use the same data split (Flower's script calls skymask-ray's
``split_root``/``split_clients`` with the same seed: client k holds the same
50 samples), the same initial weights, the same model class with
channels-last conv weights, the same local SGD (lr 0.5, element-wise gradient
clamp 0.01, plain SGD, each client's mini-batch order from the same
per-(round, client) stream), the same server step (the plain weighted mean:
skymask-ray runs with ``--global-lr 1``) and the same evaluation function.
They differ in which 50 clients a round samples (each framework's own
uniform draw).

What is timed:

* whole process: from starting the command's interpreter to its exit
  (imports, Ray start, data load and split, workers, 50 rounds, 5
  evaluations, writing results, shutdown).
* steady-state time per round: the median, over rounds 11-50 without
  evaluation (the 36 rounds 11-19, 21-29, 31-39, 41-49), of the wall time
  from the end of round r-1 to the end of round r as the driver sees it.
  skymask-ray: arrival of the CLI's progress line of each round (printed
  after the round's row and checkpoint are written; ``PYTHONUNBUFFERED``);
  Flower: the end of the strategy's centralised ``evaluate`` of each round,
  the last step of a Flower round (``configure_fit``, the clients, the
  results, ``aggregate_fit``, then ``evaluate``, a no-op in these rounds).
  Evaluation rounds are reported separately (median evaluation seconds).

Usage (the committed result: two repetitions of the pair, the order alternating,
figures are the medians; ~10 minutes per repetition on a 2-core machine)::

    python -m benchmarks.p1_throughput --repeats 2

Small validation run: ``--clients 40 --cohort 10 --rounds 4 --eval-every 3``
(with 10 rounds or fewer the steady-state rounds are rounds 2..R without evaluation).
``--skip-flower`` leaves Flower out; ``--report-only`` recomputes the figures and
the report from the JSON. Writes ``benchmarks/results/p1_throughput.md`` and
``.json`` (``--results-dir`` to change).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from benchmarks.common import ROOT, RESULTS, command_line, module_argv, script, write_result
from benchmarks.flower_p1 import p1_options
from benchmarks.w1_throughput import FLOWER_SPEC, _venv_python, ensure_flower_venv

TARGET_WHOLE = 10.0  # Flower / skymask-ray, whole process
TARGET_ROUND = 20.0  # Flower / skymask-ray, steady-state time per round
ROUND_LINE = re.compile(r"^round\s+(\d+) \|")


def skymask_flags(a: Any) -> list[str]:
    """The skymask-ray CLI's arguments for P1 (without --out)."""
    return ["--dataset", "fmnist", "--model", "cnn", "--partition", "iid", "--clients", str(a.clients),
            "--cohort", str(a.cohort), "--samples-per-client", str(a.samples), "--local-epochs", "1",
            "--batch-size", str(a.batch_size), "--local-lr", str(a.lr), "--grad-clip", str(a.grad_clip),
            "--global-lr", "1.0", "--defense", "fedavg", "--attack", "none", "--malicious", "0",
            "--eval-every", str(a.eval_every), "--rounds", str(a.rounds), "--seed", str(a.seed)]


def flower_flags(a: Any) -> list[str]:
    """``benchmarks.flower_p1``'s arguments for P1."""
    return ["--clients", str(a.clients), "--cohort", str(a.cohort), "--samples", str(a.samples),
            "--rounds", str(a.rounds), "--eval-every", str(a.eval_every), "--lr", str(a.lr),
            "--grad-clip", str(a.grad_clip), "--batch-size", str(a.batch_size), "--seed", str(a.seed)]


# ----- the machine -------------------------------------------------------------------------------
def machine_snapshot() -> dict[str, Any]:
    """Load averages, ``uptime`` and the head of ``top -bn1`` (who else is using the CPUs)."""
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"({' '.join(cmd)} failed: {exc})"

    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg": list(os.getloadavg()),
            "uptime": out(["uptime"]), "top": _last_top_frame(out(["top", "-bn2", "-d", "1", "-w", "160"]))}


def _last_top_frame(text: str, lines: int = 20) -> str:
    """The head of ``top``'s last frame (the first frame's CPU line is an average since boot)."""
    last = "top - " + text.split("top - ")[-1]
    return "\n".join(last.splitlines()[:lines])


def steady_rounds(rounds: int, eval_every: int) -> list[int]:
    """Rounds 11..R without evaluation (R itself evaluates); rounds 2..R without evaluation when R <= 10."""
    first = 11 if rounds > 10 else 2
    return [r for r in range(first, rounds + 1) if r % eval_every and r != rounds]


def eval_rounds(rounds: int, eval_every: int) -> list[int]:
    return [r for r in range(1, rounds + 1) if r % eval_every == 0 or r == rounds]


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        return " / ".join(ln.strip() for ln in path.read_text().splitlines()[-lines:])
    except OSError:
        return "-"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _tee(stream: Any, sink: Any, on_line: Any = None) -> threading.Thread:
    """Copy ``stream`` to the file ``sink`` line by line in a thread, calling ``on_line(line, t)`` on arrival."""
    def pump() -> None:
        for line in stream:
            t = time.perf_counter()
            sink.write(line)
            sink.flush()
            if on_line is not None:
                on_line(line, t)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    return th


# ----- the two sides -----------------------------------------------------------------------------
def run_skymask(a: Any, tmp: Path, rep: int = 1) -> dict[str, Any]:
    """The skymask-ray CLI in a fresh interpreter; round ends from its progress lines, the rest from rounds.parquet."""
    import pyarrow.parquet as pq

    out = tmp / f"skymask-{rep}"  # a fresh folder each time (the CLI refuses another run's results)
    cmd = [sys.executable, "-m", "skymask_ray.cli", "run", *skymask_flags(a), "--out", str(out)]
    ends: dict[int, float] = {}
    log_path = tmp / "skymask.log"

    def on_line(line: str, t: float) -> None:
        m = ROUND_LINE.match(line)
        if m:
            ends[int(m.group(1))] = t
            print(f"  skymask-ray {line.rstrip()[:60]}", file=sys.stderr, flush=True)

    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        th = _tee(proc.stdout, log, on_line)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        th.join()
    if rc != 0 or len(ends) != a.rounds:
        sys.stderr.write(log_path.read_text()[-4000:])
        raise RuntimeError(f"skymask-ray run failed (exit {rc}, {len(ends)} of {a.rounds} rounds); log above")
    rows = sorted(pq.read_table(out / "rounds.parquet").to_pylist(), key=lambda r: r["round"])
    import ray
    import skymask_ray

    rounds = []
    for r in rows:
        k = int(r["round"])
        rounds.append({"round": k, "interval_s": ends[k] - ends[k - 1] if k > 1 else None,
                       "t_round": float(r["t_round"]), "t_eval": float(r["t_eval"]),
                       "t_clients": float(r["t_clients"]), "fit_s": float(r["t_round"]) - float(r["t_eval"]),
                       "cohort": int(r["cohort"]), "trained_clients": int(r["trained_clients"]),
                       "accuracy": r["accuracy"], "end_s": ends[k] - t0})
    return {
        "framework": "skymask-ray", "version": skymask_ray.__version__, "ray_version": ray.__version__,
        "command": " ".join(["python -m skymask_ray.cli run", *skymask_flags(a), "--out", "OUT"]),
        "wall_s": wall, "first_round_start_s": rounds[0]["end_s"] - rounds[0]["t_round"],
        "last_round_end_s": rounds[-1]["end_s"], "rounds": rounds,
        "evals": [{"round": r["round"], "accuracy": r["accuracy"], "seconds": r["t_eval"]}
                  for r in rounds if r["accuracy"] is not None],
    }


def run_flower(a: Any, tmp: Path) -> dict[str, Any]:
    """``benchmarks.flower_p1`` under the venv's interpreter; whole-process wall time measured here."""
    cmd = [*module_argv("flower_p1", _venv_python()), *flower_flags(a)]
    log_path = tmp / "flower.log"
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        t0_epoch = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(log_path.read_text()[-4000:])
        raise RuntimeError(f"flower_p1.py failed (exit {proc.returncode}); its log is above")
    res = json.loads(lines[-1])
    offset = res["t_call_epoch"] - t0_epoch  # seconds from launch to run_simulation's call
    for r in res["rounds"]:
        r["end_s"] += offset
    res.update(wall_s=wall, first_round_start_s=res["before_round1_s"] + offset,
               last_round_end_s=res["last_round_end_s"] + offset,
               command=" ".join([f"{_venv_python().relative_to(ROOT)} -m benchmarks.flower_p1", *flower_flags(a)]))
    return res


def summarize(side: dict[str, Any], a: Any) -> dict[str, Any]:
    """The figures compared: whole process, steady-state round, fit-only round, evaluation, set-up."""
    by = {r["round"]: r for r in side["rounds"]}
    steady = [by[k]["interval_s"] for k in steady_rounds(a.rounds, a.eval_every) if by[k]["interval_s"] is not None]
    fit = [by[k]["fit_s"] for k in steady_rounds(a.rounds, a.eval_every)]
    clients = [by[k]["t_clients"] for k in steady_rounds(a.rounds, a.eval_every) if "t_clients" in by[k]]
    out = {
        "t_clients_median_s": _median(clients),
        "wall_s": side["wall_s"],
        "steady_round_median_s": _median(steady),
        "steady_round_mean_s": statistics.mean(steady) if steady else None,
        "steady_round_min_s": min(steady) if steady else None,
        "steady_round_max_s": max(steady) if steady else None,
        "steady_fit_median_s": _median(fit),
        "eval_median_s": _median([e["seconds"] for e in side["evals"]]),
        "round1_s": by[1]["end_s"] - side["first_round_start_s"],
        "setup_s": side["first_round_start_s"],
        "after_last_round_s": side["wall_s"] - side["last_round_end_s"],
        "accuracy": {int(e["round"]): e["accuracy"] for e in side["evals"]},
    }
    if "actors" in side:  # Flower: the clients' own fit time, spread over its actors (work any framework does)
        fit_in = _median([by[k]["client_train_s"] / side["actors"] for k in steady_rounds(a.rounds, a.eval_every)])
        out["client_fit_per_actor_median_s"] = fit_in
        out["client_fit_share"] = fit_in / out["steady_round_median_s"] if fit_in and out["steady_round_median_s"] else None
    return out


# ----- report ------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _git() -> dict[str, Any]:
    def out(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    return {"commit": out("rev-parse", "--short", "HEAD").strip(),
            "dirty_package_files": [ln[3:] for ln in out("status", "--porcelain", "--", "skymask_ray").splitlines()
                                    if ln.strip()]}


def report(res: dict[str, Any]) -> str:
    """The Markdown report."""
    a, s = res["args"], res["summary"]
    sky, fl = s["skymask-ray"], s.get("flower")
    steady = steady_rounds(a["rounds"], a["eval_every"])
    m0, m1 = res["machine"]["before"], res["machine"]["after"]
    cpus = res["machine"]["cpus"]
    first = {k: v[0] for k, v in res["results"].items()}
    reps = len(res["per_repetition"]["skymask-ray"])
    cohort = a["cohort"]
    acc_sky = {int(k): v for k, v in sky["accuracy"].items()}
    acc_fl = {int(k): v for k, v in (fl or {}).get("accuracy", {}).items()}
    lines = [f"# P1 cross-device throughput: skymask-ray vs Flower (`{res.get('command', 'python -m benchmarks.p1_throughput')}`)", ""]
    busy = max(m0["loadavg"][0], m1["loadavg"][0]) > 0.25 * cpus
    if busy:
        lines += [f"**The machine was shared and busy: other developers' jobs were running** (1-min load average "
                  f"{m0['loadavg'][0]:.2f} before, {m1['loadavg'][0]:.2f} after, on {cpus} CPUs; `top` below). "
                  "Both sides ran one after the other, so each saw a different share of the CPUs; the figures "
                  "are noisy and slower than on an idle machine.", ""]
    lines += [
        f"Workload (pfl-research's CIFAR-10 benchmark shape, on Fashion-MNIST): cnn ({res['params']:,} parameters), "
        f"{a['clients']} IID clients x {a['samples']} samples, {a['cohort']} clients per round, 1 local epoch, "
        f"batch {a['batch_size']} ({-(-a['samples'] // a['batch_size'])} steps per client), SGD lr {a['lr']}, "
        f"element-wise gradient clamp {a['grad_clip']}, FedAvg (plain weighted mean), no attack, {a['rounds']} "
        f"rounds, evaluation on the 10,000-sample test set every {a['eval_every']} rounds. Machine: {cpus} CPUs, "
        f"{res['machine']['platform']}, Python {res['machine']['python']}, torch {res['machine']['torch']}; "
        f"skymask-ray {first['skymask-ray']['version']} (commit {res['git']['commit']}"
        + (f", with other developers' uncommitted changes in {len(res['git']['dirty_package_files'])} package "
           "file(s)" if res['git']['dirty_package_files'] else "")
        + f") on Ray {first['skymask-ray']['ray_version']}"
        + (f"; Flower {first['flower']['version']} on Ray {first['flower']['ray_version']} "
           "(its own venv)" if fl else "") + ".",
        "",
        (f"Figures: medians over {reps} repetitions of the pair (the order alternating; each repetition "
         "below)." if reps > 1 else "Figures: one run of each side, skymask-ray first."),
        "",
        "| | skymask-ray | Flower | Flower / skymask-ray | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def row(name: str, key: str, target: float | None = None) -> str:
        x, y = sky.get(key), (fl or {}).get(key)
        ratio = y / x if x and y else None
        met = "-" if target is None or ratio is None else ("**yes**" if ratio >= target else "**no**")
        return (f"| {name} | {_f(x)} | {_f(y)} | {_f(ratio)}{'x' if ratio else ''} | "
                f"{f'>= {target:.0f}x' if target else ''} | {met} |")

    lines += [
        row("whole process, s", "wall_s", TARGET_WHOLE),
        row(f"steady-state s per round (median, {len(steady)} rounds)", "steady_round_median_s", TARGET_ROUND),
        row("steady-state s per round (mean)", "steady_round_mean_s"),
        row("steady-state s per round (min)", "steady_round_min_s"),
        row("steady-state s per round (max)", "steady_round_max_s"),
        row("training part of a round, s (median, same rounds)", "steady_fit_median_s"),
        row(f"evaluation, s (median of {len(eval_rounds(a['rounds'], a['eval_every']))})", "eval_median_s"),
        row("set-up: launch to round 1's start, s", "setup_s"),
        row("round 1, s", "round1_s"),
        row("after the last round to exit, s", "after_last_round_s"),
        "",
        "Accuracy on the test set: " + "; ".join(
            f"round {r}: skymask-ray {acc_sky[r]:.4f}" + (f", Flower {acc_fl[r]:.4f}" if r in acc_fl else "")
            for r in sorted(acc_sky)) + "." + (" (Flower's cohorts are its own random draws; first repetition.)"
                                               if fl else ""),
    ]
    if fl and fl.get("client_fit_per_actor_median_s"):
        lines += [
            "",
            f"Where the time goes: in the same rounds Flower's {cohort} clients spend a median "
            f"{fl['client_fit_per_actor_median_s'] * first['flower']['actors']:.2f} s in their own `fit` (set "
            "weights, local SGD, read weights, inside the actors), "
            f"{fl['client_fit_per_actor_median_s']:.2f} s of wall time over its {first['flower']['actors']} "
            f"actors, {100 * fl['client_fit_share']:.0f} % of its {fl['steady_round_median_s']:.2f} s round "
            "(that time is inflated by whatever else shares the 2 cores, Flower's own message handling "
            f"included); its framework overhead is the rest, about "
            f"{fl['steady_round_median_s'] - fl['client_fit_per_actor_median_s']:.2f} s. skymask-ray's round "
            f"({sky['steady_round_median_s']:.2f} s) is almost all client training too (`t_clients`, median "
            f"{_f(sky.get('t_clients_median_s'))} s). Both rounds are dominated by the same {cohort} x "
            f"{-(-a['samples'] // a['batch_size'])} SGD steps of batch {a['batch_size']} on 2 cores, so the "
            "ratio mostly measures how fast each side runs the same training, not framework overhead: 20x would "
            f"need Flower to spend about {20 * sky['steady_round_median_s']:.0f} s per round here.",
            "",
            f"Whole process: skymask-ray spends {sky['setup_s']:.1f} s "
            f"({100 * sky['setup_s'] / sky['wall_s']:.0f} %) before round 1 (interpreter and imports, Ray, data "
            "load and split, the client workers and the server's actor, a warm-up step); Flower "
            f"{fl['setup_s']:.1f} s, but its round 1 takes {fl['round1_s']:.1f} s (the actors start, import, load "
            "the data and take their first steps there).",
        ]
    if reps > 1 and fl:
        lines += ["", "| repetition | first | load at start (sky / Flower) | whole process s (sky / Flower) | ratio "
                  "| steady s per round (sky / Flower) | ratio |", "|---:|---|---|---|---:|---|---:|"]
        for i, (rs, rf) in enumerate(zip(res["per_repetition"]["skymask-ray"], res["per_repetition"]["flower"])):
            ls, lf = res["results"]["skymask-ray"][i], res["results"]["flower"][i]
            lines.append(
                f"| {i + 1} | {'skymask-ray' if ls['position'] == 1 else 'Flower'} | {ls['loadavg_start']:.1f} / "
                f"{lf['loadavg_start']:.1f} | {rs['wall_s']:.1f} / {rf['wall_s']:.1f} | "
                f"{rf['wall_s'] / rs['wall_s']:.2f}x | {_f(rs['steady_round_median_s'])} / "
                f"{_f(rf['steady_round_median_s'])} | "
                f"{_f(rf['steady_round_median_s'] / rs['steady_round_median_s'])}x |")
    lines += [
        "",
        "## What is timed",
        "",
        "* **Whole process**: launch of the command's interpreter to its exit, measured by the driver (imports, "
        "Ray start, data load and split, workers/actors, all rounds, the evaluations, results, shutdown).",
        f"* **Steady-state s per round**: over rounds {steady[0] if steady else '-'}-{steady[-1] if steady else '-'} "
        "without evaluation "
        f"({', '.join(map(str, steady))}), the wall time from the end of round r-1 to the end of round r. "
        "skymask-ray: arrival (at the driver, through a pipe, unbuffered) of the CLI's progress line of each "
        "round, printed after the round's row and checkpoint are written. Flower: the end of the strategy's "
        "centralised `evaluate` of each round (a no-op returning None in these rounds), the last step of a "
        "Flower round after `configure_fit`, the clients' fits and `aggregate_fit`. Rounds that follow an "
        "evaluation round start after that evaluation, so no evaluation is inside these intervals.",
        "* **Training part of a round**: skymask-ray `t_round - t_eval` from rounds.parquet (sampling, "
        "broadcast, training, gathering, aggregation, applying); Flower `configure_fit` start to `aggregate_fit` "
        "end.",
        "* **Evaluation**: skymask-ray `t_eval`; Flower the strategy's `evaluate`, in rounds "
        f"{', '.join(map(str, eval_rounds(a['rounds'], a['eval_every'])))}. Both "
        "call `skymask_ray.evaluation.evaluate` on the same 10,000 test samples in the driver process "
        "(Flower: its ServerApp's process).",
        "",
        "## Commands",
        "",
        "```",
        "# skymask-ray (OUT a fresh temporary folder)",
        first["skymask-ray"]["command"],
    ]
    if fl:
        lines += ["# Flower", first["flower"]["command"]]
    lines += [
        "```",
        "",
        "## Settings and caveats",
        "",
        f"* Data: skymask-ray first takes a {res['root_size']}-sample root set (unused by FedAvg) out of the "
        f"60,000 training samples, splits the other {60000 - res['root_size']:,} IID into {a['clients']} disjoint "
        f"shards of {(60000 - res['root_size']) // a['clients']}-{-(-(60000 - res['root_size']) // a['clients'])} "
        f"samples, and caps each at {a['samples']} (a random {a['samples']} of its shard): since "
        f"{a['clients']} x {a['samples']} = {a['clients'] * a['samples']:,} < 60,000 the shards are a cap of a "
        "disjoint split, not drawn with replacement. Every client holds exactly "
        f"{a['samples']} samples. Flower's clients hold the same samples (its script calls skymask-ray's split "
        "with the same seed).",
        "* The brief's command plus `--partition iid` (the default partition is the paper's non-IID bias 0.5; "
        "pfl-research's benchmark is IID), `--global-lr 1.0` (skymask-ray's default server step is 0.5; Flower's "
        "FedAvg takes the weighted mean, i.e. 1.0), and the default local lr 0.5 and clamp 0.01 spelled out. "
        "Flower's local loop is the same clamp-and-step loop, on the same model class with channels-last conv "
        "weights, with each client's batch order from the same per-(round, client) seed.",
        f"* Cohorts: skymask-ray draws its own {a['cohort']} of {a['clients']} per round, Flower's "
        f"`FedAvg(fraction_fit={a['cohort'] / a['clients']:g})` its own; the clients differ, their sizes and "
        "work do not.",
        "* Parallelism: skymask-ray one client worker per core (2; Ray reserves 0.5 CPU each beside 1 CPU for "
        "the server's mask-trainer actor, idle under FedAvg), one torch thread per worker; Flower `client_resources = {num_cpus: 1}` (2 actors, one torch thread each, Ray sets "
        "OMP_NUM_THREADS=1). Evaluation runs in each framework's driver process with torch's default threads.",
        "* Flower has no warm-up: its actors load the data and pay torch's first-step costs in round 1, as in a "
        "user's run; skymask-ray's workers take one throw-away step at start-up. Both are in the whole-process "
        "time, neither in the steady-state rounds.",
        "* Each side starts its own local Ray instance (`address=local`); Flower's venv has its own Ray.",
        "",
        "## Machine load",
        "",
        f"Before ({m0['time']}): `{m0['uptime']}`; after ({m1['time']}): `{m1['uptime']}`.",
        "",
        "`top -bn1` before:",
        "",
        "```",
        m0["top"],
        "```",
        "",
        "`top -bn1` after:",
        "",
        "```",
        m1["top"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def _pair(a: Any, rep: int, tmp: Path, flower: bool, failures: list[str]) -> dict[str, Any]:
    """One repetition: both sides, one after the other (skymask-ray first in odd repetitions)."""
    out: dict[str, Any] = {}
    order = ["skymask-ray", "flower"] if rep % 2 else ["flower", "skymask-ray"]
    for side in order:
        load = os.getloadavg()[0]
        if side == "skymask-ray":
            print(f"[{rep}] skymask-ray ...", file=sys.stderr, flush=True)
            out[side] = run_skymask(a, tmp, rep)
        elif flower:
            print(f"[{rep}] Flower ...", file=sys.stderr, flush=True)
            for attempt in range(1, a.flower_attempts + 1):
                try:
                    out[side] = run_flower(a, tmp)
                    out[side]["attempt"] = attempt
                    break
                except RuntimeError as exc:
                    failures.append(f"repetition {rep}, attempt {attempt}: {exc}; last log lines: "
                                    f"{_log_tail(tmp / 'flower.log')}")
                    print(f"Flower failed ({exc})", file=sys.stderr)
        if side in out:
            out[side].update(repetition=rep, position=order.index(side) + 1, loadavg_start=load,
                             loadavg_end=os.getloadavg()[0])
    return out


def combine(per_rep: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise median over repetitions of each numeric figure; accuracy from the first."""
    out: dict[str, Any] = {"accuracy": per_rep[0]["accuracy"]}
    for key, v in per_rep[0].items():
        if isinstance(v, (int, float)) or v is None:
            xs = [s[key] for s in per_rep if s.get(key) is not None]
            out[key] = statistics.median(xs) if xs else None
    return out


@script(__doc__)
@p1_options
@click.option("--repeats", type=int, default=1,
              help="Repetitions of the pair, alternating which side goes first (figures: medians).")
@click.option("--skip-flower", is_flag=True, help="Leave Flower (and its venv) out.")
@click.option("--flower-attempts", type=int, default=2,
              help="Tries of the Flower side (a loaded machine can make Ray's start time out).")
@click.option("--flower-spec", default=FLOWER_SPEC, help="Pip requirement installed into the Flower venv.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS)
@click.option("--report-only", is_flag=True,
              help="Run nothing: recompute the figures and the report from RESULTS_DIR/p1_throughput.json.")
def main(**options: Any) -> None:
    """Run both sides, one after the other, ``--repeats`` times, and write the report."""
    a = SimpleNamespace(**options)
    if a.report_only:
        rerender(a.results_dir)
        return

    import torch

    from skymask_ray.models import CNN

    flower_version = None
    install_error = None
    if not a.skip_flower:
        try:
            flower_version = ensure_flower_venv(a.flower_spec)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            install_error = f"{type(exc).__name__}: {exc}"
            print(f"Flower unavailable ({install_error}); running skymask-ray only", file=sys.stderr)
    before = machine_snapshot()
    failures: list[str] = []
    results: dict[str, list[dict[str, Any]]] = {"skymask-ray": [], "flower": []}
    with tempfile.TemporaryDirectory(prefix="p1-") as tmp:
        for rep in range(1, a.repeats + 1):
            for side, run in _pair(a, rep, Path(tmp), flower_version is not None, failures).items():
                results[side].append(run)
    after = machine_snapshot()
    if not results["flower"]:
        del results["flower"]
    flower_error = install_error or (failures[-1] if flower_version and "flower" not in results else None)
    res = {
        "command": command_line(__file__), "args": vars(a) | {"results_dir": str(a.results_dir)},
        "params": sum(p.numel() for p in CNN((1, 28, 28), 10).parameters()), "root_size": 100,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "before": before, "after": after},
        "git": _git(), "flower_error": flower_error, "flower_failed_attempts": failures,
        "targets": {"whole": TARGET_WHOLE, "steady_round": TARGET_ROUND}, "results": results,
    }
    write_outputs(res, a.results_dir)


def figures(res: dict[str, Any]) -> None:
    """(Re)compute the per-repetition summaries, their medians and the ratios from the raw results, in place."""
    a = SimpleNamespace(**res["args"])
    per_rep = {k: [summarize(r, a) for r in v] for k, v in res["results"].items()}
    summary = {k: combine(v) for k, v in per_rep.items()}
    sky, fl = summary["skymask-ray"], summary.get("flower")
    ratios = None
    if fl:
        steady = (fl["steady_round_median_s"] / sky["steady_round_median_s"]
                  if fl["steady_round_median_s"] and sky["steady_round_median_s"] else None)
        ratios = {"whole": fl["wall_s"] / sky["wall_s"], "steady_round": steady,
                  "met_whole": fl["wall_s"] / sky["wall_s"] >= TARGET_WHOLE,
                  "met_steady_round": None if steady is None else steady >= TARGET_ROUND}
    res.update(per_repetition=per_rep, summary=summary, ratios_flower_over_skymask=ratios)


def write_outputs(res: dict[str, Any], results_dir: Path) -> None:
    """Figures, then ``p1_throughput.md`` and ``.json`` in ``results_dir``; prints the report."""
    figures(res)
    md = report(res)
    failures, flower_error = res["flower_failed_attempts"], res["flower_error"]
    if failures and "flower" in res["results"]:
        md += "\nFailed Flower attempts (retried): " + " | ".join(f"`{f}`" for f in failures) + "\n"
    if flower_error:
        md += f"\n**Flower could not be installed or run here** ({flower_error}); only skymask-ray's side is shown.\n"
    write_result(results_dir / "p1_throughput.md", md)
    write_result(results_dir / "p1_throughput.json", json.dumps(res, indent=2) + "\n")
    print(md)


def rerender(results_dir: Path) -> None:
    """``--report-only``: the figures and report again from the raw results in the JSON."""
    res = json.loads((results_dir / "p1_throughput.json").read_text())
    for runs in res["results"].values():  # JSON turned the round numbers of the accuracy maps into strings
        for run in runs:
            for e in run["evals"]:
                e["round"] = int(e["round"])
    write_outputs(res, results_dir)


if __name__ == "__main__":
    main()
