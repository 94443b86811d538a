"""Running a study's cells: resume, concurrency, metadata, and the summary table of a run.

Every cell writes its rows to its own folder ``OUT/<cell>/rounds.parquet``
(:func:`skymask_ray.study.cell_name`), so no two cells share a folder. A cell
whose folder already holds all its rounds of the same experiment is skipped, so
an interrupted study resumes where it stopped, and raising ``rounds`` continues
finished cells from their checkpoints. ``concurrency`` > 1 runs that many cells
at once as Ray tasks sharing the cluster; Ray starts only when a cell is left to run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import ExperimentConfig
from .errors import ConfigError
from .markdown import markdown_table
from .defenses.base import can_reject
from .progress import round_line, setup_lines
from .results import RUN_KEYS, RoundRow, read_parquet
from .run_folder import RunFolder
from .storage import atomic_write_text, check_writable_folder
from .study import Cell, same_experiment

STUDY_METADATA = "_metadata.json"  # a study folder's own files start with "_": Parquet readers skip them
STUDY_SUMMARY = "_summary.md"


def cell_done(cfg: ExperimentConfig, folder: Path) -> bool:
    """All rounds of this experiment are already in ``folder/rounds.parquet``."""
    f = folder / "rounds.parquet"
    if not f.exists() or not same_experiment(cfg, folder):
        return False
    rounds = set(read_parquet(f, columns=["round"]).column("round").to_pylist())
    return rounds >= set(range(1, cfg.rounds + 1))


def check_cells(cells: list[Cell], out: Path, overwrite: bool) -> None:
    """Before anything runs: refuse cell folders that hold another experiment's results (unless ``overwrite``)."""
    check_writable_folder(out, "study folder")
    if overwrite:
        return
    for cell in cells:
        folder = out / cell.name
        if RunFolder(folder).result_files() and same_experiment(cell.config, folder) is False:
            raise ConfigError(f"{folder} holds results of another config; pass --overwrite to replace them "
                              f"(or choose another --out)")


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


def _run_cell(cfg: ExperimentConfig, folder: Path, on_round: Callable[[dict[str, Any]], None] | None,
              overwrite: bool = False, on_setup: Callable[[str], None] | None = None) -> None:
    from .simulation import run_experiment

    replace = overwrite and same_experiment(cfg, folder) is not True
    run_experiment(cfg, folder, resume=not replace, on_round=on_round, overwrite=replace, on_setup=on_setup)


def run_grid(
    cells: list[Cell],
    out: Path,
    echo: Callable[[str], None] = lambda s: None,
    concurrency: int = 1,
    progress: Callable[[int, str], Any] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run every cell not already complete into ``out/<cell>``; returns one summary row per cell."""
    import ray

    from .ray_session import init_ray

    if not cells:
        raise ConfigError("the study has no cells to run")
    check_cells(cells, out, overwrite)
    folder = {c.name: out / c.name for c in cells}
    todo = [c for c in cells if not cell_done(c.config, folder[c.name])]
    echo(f"{len(cells)} cells, {len(cells) - len(todo)} already complete")
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        first = todo[0].config
        started = init_ray(first.address, connect_timeout_s=first.connect_timeout_s)
        t0 = time.perf_counter()
        try:
            bar = progress(len(todo), "cell") if progress is not None else None
            say = bar.write if bar is not None else echo
            if concurrency <= 1:
                for i, cell in enumerate(todo, 1):
                    say(f"[{i}/{len(todo)}] {cell.name}")
                    rates = can_reject(cell.config.defense)
                    _run_cell(cell.config, folder[cell.name], lambda row, r=rates: say("  " + round_line(row, r)),
                              overwrite, setup_lines(bar) if bar is not None else None)
                    if bar is not None:
                        bar.update(1)
            else:
                task = ray.remote(num_cpus=0)(_run_cell)
                pending = [task.remote(c.config, folder[c.name], None, overwrite) for c in todo[:concurrency]]
                queue = todo[concurrency:]
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    ray.get(done)
                    say(f"cell finished ({len(todo) - len(queue) - len(pending)}/{len(todo)})")
                    if bar is not None:
                        bar.update(1)
                    if queue:
                        pending.append(task.remote(queue[0].config, folder[queue[0].name], None, overwrite))
                        queue = queue[1:]
            if bar is not None:
                bar.__exit__(None, None, None)
            atomic_write_text(out / STUDY_METADATA, json.dumps(metadata(time.perf_counter() - t0), indent=2))
        finally:
            if started:
                ray.shutdown()
    return [summarize(folder[c.name]) for c in cells]


def summarize(folder: Path) -> dict[str, Any]:
    """Final accuracy, mean detection and mean per-phase time of one cell."""
    rows = [RoundRow.from_dict(r) for r in read_parquet(folder / "rounds.parquet").to_pylist()]
    last = rows[-1]

    def mean(col: str) -> float | None:
        vals = [getattr(r, col) for r in rows if getattr(r, col) is not None]
        return sum(vals) / len(vals) if vals else None

    out = {k: getattr(last, k) for k in RUN_KEYS}
    out.update({"rounds": len(rows), "accuracy": last.accuracy, "backdoor_success": last.backdoor_success,
                "tpr": mean("tpr"), "fpr": mean("fpr"), "fallbacks": sum(bool(r.fallback) for r in rows),
                "single_component_rounds": sum(bool(r.single_component) for r in rows),
                "rejects": any((r.tp or 0) + (r.fp or 0) > 0 or bool(r.single_component) for r in rows),
                "peak_rss_mb": max(r.peak_rss_mb for r in rows),
                "mem_pss_mb": max((r.mem_pss_mb for r in rows if r.mem_pss_mb is not None), default=None)})
    for col in ("t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round"):
        out[col] = mean(col)
    return out


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows.

    TPR/FPR are ``-`` for a defense that rejected no client in any of the rows' runs (FedAvg, median, ...):
    undefined, not a rate of 0. Memory twice: in use (largest summed PSS; runs recorded before PSS was
    measured have none) and the sum of per-process peaks, which every run records.
    """
    cols = ["clients", "malicious_fraction", "attack", "defense", "seed", "accuracy", "tpr", "fpr", "fallbacks",
            "t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round", "mem_pss_mb", "peak_rss_mb"]
    heads = ["N", "mal", "attack", "defense", "seed", "acc", "TPR", "FPR", "fallbk", "clients s", "server s",
             "attack s", "defense s", "eval s", "round s", "mem in use MB", "sum of peaks MB"]
    rejecting = {r["defense"] for r in rows if r["rejects"]}

    def cell(r: dict[str, Any], c: str) -> str:
        v = r[c]
        if v is None or (c in ("tpr", "fpr") and r["defense"] not in rejecting):
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    return markdown_table(heads, [[cell(r, c) for c in cols] for r in rows])
