"""Grids of experiments (benchmarks and studies): cells, resume, metadata, summary table.

A grid is the product of lists over config keys: the short names of
:data:`GRID_KEYS` (clients, malicious_fraction, attack, defense, seed, dataset,
bias, ...) or any dotted config path (``train.local_lr``, ``skymask.select``,
``attack_params.spread``). Every cell writes its rows to its own folder
``OUT/<cell>/rounds.parquet``, named by every gridded value, so no two cells
share a folder. A cell whose folder already holds all its rounds of the same
experiment is skipped, so an interrupted study resumes where it stopped, and
raising ``rounds`` continues finished cells from their checkpoints.
``concurrency`` > 1 runs that many cells at once as Ray tasks sharing the cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import ExperimentConfig, config_hash, load_yaml_mapping, set_dotted
from .defenses.base import can_reject
from .experiment import build_config
from .errors import ConfigError
from .progress import round_line, setup_lines
from .results import RUN_KEYS, RoundRow, read_parquet
from .run_folder import RunFolder
from .storage import atomic_write_text, check_writable_folder

GRID_KEYS = {
    "clients": "clients", "malicious_fraction": "malicious_fraction", "malicious": "malicious_fraction",
    "attack": "attack", "defense": "defense", "seed": "seed", "dataset": "data.dataset", "model": "model",
    "bias": "data.bias", "partition": "data.partition", "rounds": "rounds",
}
STUDY_METADATA = "_metadata.json"  # a study folder's own files start with "_": Parquet readers skip them
STUDY_SUMMARY = "_summary.md"
NAMED_KEYS = {"clients", "malicious_fraction", "attack", "defense", "seed", "data.dataset", "model"}  # in every name


def grid_path(key: str) -> str:
    """The dotted config path of a grid key (a short name or a dotted path); ConfigError if it names nothing."""
    if key in GRID_KEYS:
        return GRID_KEYS[key]
    head, *rest = key.split(".")
    if head in ("attack_params", "defense_params") and len(rest) == 1:  # one key of a component's parameters
        return key
    obj: Any = ExperimentConfig()
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown grid key {key!r}; use one of {', '.join(sorted(GRID_KEYS))}, a dotted config "
                              f"path such as train.local_lr, or attack_params.NAME / defense_params.NAME")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise ConfigError(f"grid key {key!r} names a section; grid one of its fields, e.g. {key}.{dataclasses.fields(obj)[0].name}")
    return key


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def expand_grid(
    preset: str | None, config_file: str | None, base: dict[str, Any], grid: dict[str, list[Any]]
) -> list[ExperimentConfig]:
    """Validated configs of every cell (all validated before anything runs)."""
    return [cfg for cfg, _ in expand_named_grid(preset, config_file, base, grid)]


def expand_named_grid(
    preset: str | None, config_file: str | None, base: dict[str, Any], grid: dict[str, list[Any]]
) -> list[tuple[ExperimentConfig, str]]:
    """(config, folder name) of every cell; names are distinct (checked), configs validated."""
    paths = {key: grid_path(key) for key in grid}
    if len(set(paths.values())) < len(paths):
        raise ConfigError(f"grid keys {', '.join(grid)} name the same config field twice")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid key {key!r} must map to a non-empty list of values")
    varied = [paths[k] for k in grid if paths[k] not in NAMED_KEYS]
    cells = []
    for values in itertools.product(*(grid[k] for k in grid)):
        ov: dict[str, Any] = {}
        for k, v in zip(grid, values):
            if v is None:
                raise ConfigError(f"grid key {k!r} holds an empty (null) value")
            set_dotted(ov, paths[k], v)
        cfg = build_config(preset, config_file, _deep_merge(base, ov))
        cells.append((cfg, cell_name(cfg, varied)))
    names = [n for _, n in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"grid cells {', '.join(dupes[:3])} would share a folder: two grid values give the same config")
    return cells


def load_grid_file(path: str | Path) -> tuple[str | None, dict[str, Any], dict[str, list[Any]]]:
    """Read a study file: ``preset``, ``base`` (config overrides) and ``grid`` (lists)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {str(p)!r} does not exist")
    doc = load_yaml_mapping(p, "grid file")
    unknown = set(map(str, doc)) - {"preset", "base", "grid", "description", "concurrency"}
    if unknown:
        raise ConfigError(f"grid file {str(p)!r}: unknown key(s) {', '.join(sorted(unknown))}")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in grid.items()):
        raise ConfigError(f"grid file {str(p)!r}: 'grid' must map key names to lists of values")
    base = doc.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"grid file {str(p)!r}: 'base' must be a mapping of config keys, not a {type(base).__name__}")
    preset = doc.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"grid file {str(p)!r}: 'preset' must be a name")
    return preset, base, grid


def _value_of(cfg: ExperimentConfig, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _slug(value: Any) -> str:
    text = format(value, "g") if isinstance(value, float) else json.dumps(value, sort_keys=True) \
        if isinstance(value, (dict, list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+_=]+", "_", text)[:40]


def cell_name(cfg: ExperimentConfig, varied: list[str] | tuple[str, ...] = ()) -> str:
    """Folder name of a cell: the standard coordinates, then ``key=value`` for every other gridded key.

    Without extra keys the name is what earlier versions wrote, so existing
    study folders stay valid. A value that does not fit a short readable slug
    adds a hash of the full value, so two cells never share a name.
    """
    name = (f"{cfg.data.dataset}-{cfg.model}-n{cfg.clients}-m{cfg.malicious_fraction:g}-{cfg.attack}-"
            f"{cfg.defense}-s{cfg.seed}")
    for path in varied:
        value = _value_of(cfg, path)
        slug = _slug(value)
        full = json.dumps(value, sort_keys=True, default=str)
        if slug != full.strip('"'):
            slug += "-" + hashlib.sha256(full.encode()).hexdigest()[:6]
        name += f"-{path.split('.')[-1]}={slug}"
    return name


def same_experiment(cfg: ExperimentConfig, folder: Path) -> bool | None:
    """Does the folder's config describe the same experiment (all but rounds and where it runs)? None: no config."""
    f = RunFolder(folder).existing_config()
    if f is None:
        return None
    try:
        return config_hash(build_config(file=f)) == config_hash(cfg)
    except ConfigError:
        return False


def cell_done(cfg: ExperimentConfig, folder: Path) -> bool:
    """All rounds of this experiment are already in ``folder/rounds.parquet``."""
    f = folder / "rounds.parquet"
    if not f.exists() or not same_experiment(cfg, folder):
        return False
    rounds = set(read_parquet(f, columns=["round"]).column("round").to_pylist())
    return rounds >= set(range(1, cfg.rounds + 1))


def check_cells(cells: list[tuple[ExperimentConfig, str]], out: Path, overwrite: bool) -> None:
    """Before anything runs: refuse cell folders that hold another experiment's results (unless ``overwrite``)."""
    check_writable_folder(out, "study folder")
    if overwrite:
        return
    for cfg, name in cells:
        folder = out / name
        if RunFolder(folder).result_files() and same_experiment(cfg, folder) is False:
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
    preset: str | None,
    config_file: str | None,
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    out: Path,
    echo: Callable[[str], None] = lambda s: None,
    concurrency: int = 1,
    progress: Callable[[int, str], Any] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run every cell not already complete; returns one summary row per cell."""
    import ray

    from .runtime import init_ray

    named = expand_named_grid(preset, config_file, base, grid)
    check_cells(named, out, overwrite)
    cells = [c for c, _ in named]
    folder = {id(c): out / n for c, n in named}
    out.mkdir(parents=True, exist_ok=True)
    started = init_ray(cells[0].address, connect_timeout_s=cells[0].connect_timeout_s)
    t0 = time.perf_counter()
    try:
        todo = [c for c in cells if not cell_done(c, folder[id(c)])]
        echo(f"{len(cells)} cells, {len(cells) - len(todo)} already complete")
        bar = progress(len(todo), "cell") if progress is not None else None
        say = bar.write if bar is not None else echo
        if concurrency <= 1:
            for i, cfg in enumerate(todo, 1):
                say(f"[{i}/{len(todo)}] {folder[id(cfg)].name}")
                _run_cell(cfg, folder[id(cfg)], lambda row: say("  " + round_line(row)), overwrite,
                          setup_lines(bar) if bar is not None else None)
                if bar is not None:
                    bar.update(1)
        else:
            task = ray.remote(num_cpus=0)(_run_cell)
            pending = [task.remote(c, folder[id(c)], None, overwrite) for c in todo[:concurrency]]
            queue = todo[concurrency:]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
                say(f"cell finished ({len(todo) - len(queue) - len(pending)}/{len(todo)})")
                if bar is not None:
                    bar.update(1)
                if queue:
                    pending.append(task.remote(queue[0], folder[id(queue[0])], None, overwrite))
                    queue = queue[1:]
        if bar is not None:
            bar.__exit__(None, None, None)
        atomic_write_text(out / STUDY_METADATA, json.dumps(metadata(time.perf_counter() - t0), indent=2))
    finally:
        if started:
            ray.shutdown()
    return [summarize(folder[id(c)]) for c in cells]


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
                "peak_rss_mb": max(r.peak_rss_mb for r in rows),
                "mem_pss_mb": max((r.mem_pss_mb for r in rows if r.mem_pss_mb is not None), default=None)})
    for col in ("t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round"):
        out[col] = mean(col)
    return out


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows (TPR/FPR ``-`` for a defense that cannot reject).

    Memory twice: in use (largest summed PSS; runs recorded before PSS was measured have none) and the
    sum of per-process peaks, which every run records.
    """
    cols = ["clients", "malicious_fraction", "attack", "defense", "seed", "accuracy", "tpr", "fpr", "fallbacks",
            "t_clients", "t_server", "t_attack", "t_defense", "t_eval", "t_round", "mem_pss_mb", "peak_rss_mb"]
    heads = ["N", "mal", "attack", "defense", "seed", "acc", "TPR", "FPR", "fallbk", "clients s", "server s",
             "attack s", "defense s", "eval s", "round s", "mem in use MB", "sum of peaks MB"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    def value(r: dict[str, Any], c: str) -> Any:
        return None if c in ("tpr", "fpr") and not can_reject(r["defense"]) else r[c]

    lines += ["| " + " | ".join(cell(value(r, c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
