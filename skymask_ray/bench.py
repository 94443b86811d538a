"""Grids of experiments (benchmarks and studies): cells, resume, metadata, summary table.

A grid is the product of lists over config keys (clients, malicious_fraction,
attack, defense, seed, dataset, ...). Every cell writes its rows to its own
folder ``OUT/<cell>/rounds.parquet`` (a Parquet dataset partitioned by cell);
a cell whose file already holds all its rounds for the same config hash is
skipped, so an interrupted study resumes where it stopped. ``concurrency`` > 1
runs that many cells at once as Ray tasks sharing the cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from . import __version__
from .config import ExperimentConfig, build_config, config_hash, set_dotted
from .errors import ConfigError
from .results import read_parquet

GRID_KEYS = {
    "clients": "clients", "malicious_fraction": "malicious_fraction", "malicious": "malicious_fraction",
    "attack": "attack", "defense": "defense", "seed": "seed", "dataset": "data.dataset", "model": "model",
    "bias": "data.bias", "partition": "data.partition", "rounds": "rounds",
}


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def expand_grid(
    preset: str | None, config_file: str | None, base: dict[str, Any], grid: dict[str, list[Any]]
) -> list[ExperimentConfig]:
    """Validated configs of every cell (all validated before anything runs)."""
    for key in grid:
        if key not in GRID_KEYS:
            raise ConfigError(f"unknown grid key {key!r}; known: {', '.join(sorted(GRID_KEYS))}")
    keys = list(grid)
    cells = []
    for values in itertools.product(*(grid[k] for k in keys)):
        ov: dict[str, Any] = {}
        for k, v in zip(keys, values):
            set_dotted(ov, GRID_KEYS[k], v)
        cells.append(build_config(preset, config_file, _deep_merge(base, ov)))
    return cells


def load_grid_file(path: str | Path) -> tuple[str | None, dict[str, Any], dict[str, list[Any]]]:
    """Read a study file: ``preset``, ``base`` (config overrides) and ``grid`` (lists)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {str(p)!r} does not exist")
    doc = yaml.safe_load(p.read_text()) or {}
    unknown = set(doc) - {"preset", "base", "grid", "description", "concurrency"}
    if unknown:
        raise ConfigError(f"grid file {str(p)!r}: unknown key(s) {', '.join(sorted(unknown))}")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ConfigError(f"grid file {str(p)!r}: 'grid' must map keys to lists")
    return doc.get("preset"), doc.get("base") or {}, grid


def cell_name(cfg: ExperimentConfig) -> str:
    """Folder name of a cell: every grid coordinate, readable."""
    return (f"{cfg.data.dataset}-{cfg.model}-n{cfg.clients}-m{cfg.malicious_fraction:g}-{cfg.attack}-"
            f"{cfg.defense}-s{cfg.seed}")


def cell_done(cfg: ExperimentConfig, folder: Path) -> bool:
    """All rounds of this exact config are already in ``folder/rounds.parquet``."""
    f = folder / "rounds.parquet"
    if not f.exists():
        return False
    t = read_parquet(f, columns=["round", "config_hash"]).to_pydict()
    return set(t["config_hash"]) == {config_hash(cfg)} and set(t["round"]) >= set(range(1, cfg.rounds + 1))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(wall_s: float) -> dict[str, Any]:
    """Versions, commit, hardware and wall time of a study."""
    import ray
    import torch

    res = ray.cluster_resources() if ray.is_initialized() else {}
    return {
        "package_version": __version__, "git_commit": _git_commit(), "ray": ray.__version__,
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
        "cluster_resources": {k: v for k, v in res.items() if not k.startswith("node:")},
        "wall_time_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _run_cell(cfg: ExperimentConfig, folder: Path, on_round: Callable[[dict[str, Any]], None] | None) -> None:
    from .simulation import run_experiment

    run_experiment(cfg, folder, resume=True, on_round=on_round)


def run_grid(
    preset: str | None,
    config_file: str | None,
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    out: Path,
    echo: Callable[[str], None] = lambda s: None,
    concurrency: int = 1,
    progress: Callable[[int, str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not already complete; returns one summary row per cell."""
    import ray

    from .runtime import init_ray

    cells = expand_grid(preset, config_file, base, grid)
    out.mkdir(parents=True, exist_ok=True)
    started = init_ray(cells[0].address)
    t0 = time.perf_counter()
    try:
        todo = [c for c in cells if not cell_done(c, out / cell_name(c))]
        echo(f"{len(cells)} cells, {len(cells) - len(todo)} already complete")
        bar = progress(len(todo), "cell") if progress is not None else None
        say = bar.write if bar is not None else echo
        if concurrency <= 1:
            from .cli import round_line

            for i, cfg in enumerate(todo, 1):
                say(f"[{i}/{len(todo)}] {cell_name(cfg)}")
                _run_cell(cfg, out / cell_name(cfg), lambda row: say("  " + round_line(row)))
                if bar is not None:
                    bar.update(1)
        else:
            task = ray.remote(num_cpus=0)(_run_cell)
            pending = [task.remote(c, out / cell_name(c), None) for c in todo[:concurrency]]
            queue = todo[concurrency:]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
                say(f"cell finished ({len(todo) - len(queue) - len(pending)}/{len(todo)})")
                if bar is not None:
                    bar.update(1)
                if queue:
                    pending.append(task.remote(queue[0], out / cell_name(queue[0]), None))
                    queue = queue[1:]
        if bar is not None:
            bar.__exit__(None, None, None)
        (out / "metadata.json").write_text(json.dumps(metadata(time.perf_counter() - t0), indent=2))
    finally:
        if started:
            ray.shutdown()
    return [summarize(out / cell_name(c)) for c in cells]


def summarize(folder: Path) -> dict[str, Any]:
    """Final accuracy, mean detection and mean per-phase time of one cell."""
    rows = read_parquet(folder / "rounds.parquet").to_pylist()
    last = rows[-1]

    def mean(col: str) -> float | None:
        vals = [r[col] for r in rows if r[col] is not None]
        return sum(vals) / len(vals) if vals else None

    out = {k: last[k] for k in ("dataset", "model", "clients", "malicious_fraction", "attack", "defense", "seed")}
    out.update({"rounds": len(rows), "accuracy": last["accuracy"], "backdoor_success": last["backdoor_success"],
                "tpr": mean("tpr"), "fpr": mean("fpr"), "fallbacks": sum(bool(r["fallback"]) for r in rows),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rows)})
    for col in ("t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round"):
        out[col] = mean(col)
    return out


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows."""
    cols = ["clients", "malicious_fraction", "attack", "defense", "seed", "accuracy", "tpr", "fpr", "fallbacks",
            "t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round", "peak_rss_mb"]
    heads = ["N", "mal", "attack", "defense", "seed", "acc", "TPR", "FPR", "fallbk", "clients s", "server s",
             "attack s", "defense s", "eval s", "round s", "peak MB"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
