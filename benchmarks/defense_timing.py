"""Time one aggregation of every registered defense (skymask excepted) at N = 100, 500, 1000 clients.

P = 139,960 (the paper's Fashion-MNIST cnn); random updates with 20 % planted
outliers. Each defense runs in a fresh (spawned) child process that builds the
same seeded updates, so that its extra peak memory (peak RSS minus the RSS
once the updates exist) is measured on its own. Stateful
defenses are warmed up first (centered_clipping: one round; fldetector: enough
rounds to fill its window); every defense then runs one untimed aggregation (so
first-touch allocation is not timed) and the median of the timed rounds is kept.
SkyMask is timed with the cnn and a root batch in ``benchmarks/mask_cost.py``.

Usage: ``python -m benchmarks.defense_timing [--clients 100,500,1000] [--repeats 3]``.
Writes ``benchmarks/results/defense_timing.md`` and ``.csv``.
"""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import os
import platform
import time

import click
import torch

from skymask_ray.config import ExperimentConfig
from skymask_ray.context import DefenseContext
from skymask_ray.defenses import DEFENSES, defense_settings
from skymask_ray.models import ParamSpec

from skymask_ray.markdown import markdown_table

from benchmarks.common import comma_list, invocation, peak_rss_mb, results_path, script, write_result

P = 139_960
FRACTION = 0.2
THREADS = 2


def planted_updates(n: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign rows ``mu + noise``; the first 20 % are outliers ``-3 mu + noise``. Returns (updates, g_0)."""
    gen = torch.Generator().manual_seed(seed)
    mu = 0.01 * torch.randn(p, generator=gen)
    x = torch.randn(n, p, generator=gen).mul_(0.01).add_(mu)
    f = int(round(n * FRACTION))
    x[:f] += -4 * mu
    return x, mu.clone()


def _ctx(x: torch.Tensor, f: int, r: int, w: torch.Tensor, g0: torch.Tensor) -> DefenseContext:
    spec = ParamSpec(("w",), (torch.Size([x.shape[1]]),), (0,), x.shape[1])
    return DefenseContext(round=r, global_weights=w, spec=spec, num_clients=len(x), declared_f=f,
                        generator=torch.Generator().manual_seed(r), server_update=g0)


def _warmup_rounds(name: str, cls: type, params: dict) -> int:
    if name == "centered_clipping":
        return 1
    if name == "fldetector":
        return cls.Params(**params).window + 1
    return 0


def run_one(name: str, n: int, repeats: int, queue: mp.Queue) -> None:
    """Child process: build the updates, warm up, time ``repeats`` rounds, report median seconds and memory."""
    torch.set_num_threads(THREADS)
    x, g0 = planted_updates(n, P)
    base_rss = peak_rss_mb()
    cfg = ExperimentConfig(clients=n, malicious_fraction=FRACTION, defense=name)
    cls = DEFENSES.get(name)
    cls.check(cfg)
    d = cls(defense_settings(cfg))
    f = cfg.num_malicious
    w = torch.zeros(x.shape[1])
    gen = torch.Generator().manual_seed(1)
    r = 0
    for r in range(1, _warmup_rounds(name, cls, {}) + 1):
        x.add_(0.001 * torch.randn(x.shape[1], generator=gen))  # a new round, without an N x P temporary
        agg = d.aggregate(x, _ctx(x, f, r, w, g0))
        w = w - 0.5 * agg.update
    d.aggregate(x, _ctx(x, f, r + 1, w, g0))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        agg = d.aggregate(x, _ctx(x, f, r + 2 + i, w, g0))
        times.append(time.perf_counter() - t0)
    malicious = torch.zeros(n, dtype=torch.bool)
    malicious[:f] = True
    rejected = ~agg.accepted.cpu()
    queue.put({
        "seconds": sorted(times)[len(times) // 2],
        "extra_peak_mb": peak_rss_mb() - base_rss,
        "rejected_malicious": int((rejected & malicious).sum()),
        "rejected_benign": int((rejected & ~malicious).sum()),
        "fallback": bool(agg.fallback),
    })


@script(__doc__)
@click.option("--clients", "sizes", callback=comma_list(int), default="100,500,1000", help="Comma-separated client counts.")
@click.option("--repeats", type=int, default=3, help="Timed rounds per cell (median kept).")
@click.option("--defenses", callback=comma_list(str), help="Comma-separated subset.  [default: all but skymask]")
def main(sizes: list[int], repeats: int, defenses: list[str] | None) -> None:
    names = defenses or [n for n in DEFENSES.names() if n != "skymask"]
    ctx = mp.get_context("spawn")
    load_before = os.getloadavg()[1]
    rows = []
    for n in sizes:
        for name in names:
            queue = ctx.Queue()
            proc = ctx.Process(target=run_one, args=(name, n, repeats, queue))
            proc.start()
            proc.join()
            res = queue.get() if proc.exitcode == 0 else {"seconds": float("nan"), "extra_peak_mb": float("nan"),
                                                          "rejected_malicious": -1, "rejected_benign": -1,
                                                          "fallback": False}
            row = {"defense": name, "clients": n, "params": P, "malicious": int(round(n * FRACTION)), **res}
            rows.append(row)
            print(f"N={n:5d} {name:18s} {row['seconds']:8.3f} s  +{row['extra_peak_mb']:7.0f} MB  "
                  f"rejected mal {row['rejected_malicious']:4d} ben {row['rejected_benign']:4d}", flush=True)
    write(rows, names, sizes, (load_before, os.getloadavg()[1]))


def write(rows: list[dict], names: list[str], sizes: list[int], load: tuple[float, float]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_result(results_path("defense_timing.csv"), text.getvalue())
    cell = {(r["defense"], r["clients"]): r for r in rows}
    lines = [
        "# Defense aggregation time",
        "",
        f"One aggregation of N x P float32 updates, P = {P:,} (the paper's cnn), 20 % planted outliers "
        f"(`-3 mu + noise` against `mu + noise`), torch {torch.__version__}, {THREADS} threads, "
        f"{platform.processor() or platform.machine()}, CPU only. Seconds per aggregation (median of the timed "
        "rounds, after one untimed aggregation; stateful defenses after their warm-up). "
        "`+MB`: the defense's extra peak RSS. "
        "`rej mal/ben`: malicious / benign clients rejected at the largest N. "
        f"Machine load (5-min load average, the run's own threads included) {load[0]:.1f} before and "
        f"{load[1]:.1f} after the run on {os.cpu_count()} cores. SkyMask trains masks on the model and a "
        f"root batch, so it is timed in `mask_cost.md` (`{invocation('mask_cost')}`). "
        f"Generated by `{invocation(__file__)}`.",
        "",
    ]
    header = ["defense", *(f"N={n} s" for n in sizes), f"+MB at N={sizes[-1]}", f"rej mal/ben at N={sizes[-1]}"]
    table = []
    for name in names:
        last = cell[(name, sizes[-1])]
        table.append([name, *(f"{cell[(name, n)]['seconds']:.3f}" for n in sizes), f"{last['extra_peak_mb']:.0f}",
                      f"{last['rejected_malicious']}/{last['rejected_benign']}"])
    lines.append(markdown_table(header, table, align="l" + "r" * (len(sizes) + 2)))
    write_result(results_path("defense_timing.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
