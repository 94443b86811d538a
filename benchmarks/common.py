"""What the benchmark scripts share: paths, study files, grid cells, options, Markdown tables, memory.

Every script runs from the repository root as a module, ``python -m
benchmarks.NAME``. Paths are resolved from this folder, never from the working
directory: results go to ``benchmarks/results/`` and grids are read from
``benchmarks/studies/*.yaml`` (one source of truth for rounds and lists; the
options of a script only override them).
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import yaml

if TYPE_CHECKING:
    from skymask_ray.config import ExperimentConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
STUDIES = BENCH / "studies"


# ----- paths and the command that made a result ------------------------------------------------
def results_path(*parts: str) -> Path:
    """``benchmarks/results/<parts>`` as an absolute path, whatever the working directory."""
    return RESULTS.joinpath(*parts)


def write_result(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its folder; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def module_name(script: str | Path) -> str:
    """``benchmarks.NAME`` for the script ``NAME`` (a file path or a bare name)."""
    return f"{BENCH.name}.{Path(script).stem}"


def invocation(script: str | Path) -> str:
    """How the script ``script`` is run: ``python -m benchmarks.NAME``."""
    return f"python -m {module_name(script)}"


def module_argv(script: str | Path, python: str | Path | None = None) -> list[str]:
    """The argv that runs the script ``script`` as a module with ``python`` (default: this interpreter);
    run it with ``cwd=ROOT`` so that ``benchmarks`` is importable."""
    return [str(python or sys.executable), "-m", module_name(script)]


def command_line(script: str | Path, argv: Sequence[str] | None = None, drop: Iterable[str] = ("--table-only",)) -> str:
    """The command that reproduces a result: :func:`invocation` and its arguments (``sys.argv``), less ``drop``."""
    args = sys.argv[1:] if argv is None else list(argv)
    skip = set(drop)
    return " ".join([invocation(script), *(a for a in args if a not in skip)])


# ----- options ---------------------------------------------------------------------------------
def comma_list(kind: Callable[[str], Any] = str) -> Callable[[str], list[Any]]:
    """An argparse ``type``: ``"a,b,c"`` as a list of ``kind``."""

    def parse(text: str) -> list[Any]:
        return [kind(v) for v in text.split(",") if v != ""]

    parse.__name__ = f"comma-separated {getattr(kind, '__name__', 'value')}s"
    return parse


def script_parser(doc: str | None, script: str | Path) -> argparse.ArgumentParser:
    """A script's parser: its ``-m`` invocation as prog, its docstring's first line as description."""
    lines = (doc or "").strip().splitlines()
    return argparse.ArgumentParser(prog=invocation(script), description=lines[0] if lines else None)


LIST_OPTIONS = {  # grid key -> (option, element type) of the table scripts
    "attack": ("--attacks", str),
    "defense": ("--defenses", str),
    "malicious_fraction": ("--fractions", float),
    "seed": ("--seeds", int),
}


def cell_parser(doc: str | None, script: str | Path, study: Study, out: str, results_md: str,
                lists: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The options of a script that runs a study's cells and tabulates them.

    ``--rounds`` and one comma-list option per grid key in ``lists`` (see :data:`LIST_OPTIONS`),
    defaulting to the study's grid values (or its base value, for a key the grid does not vary);
    ``--out`` (cell folders, default ``results/<out>``), ``--results-md`` (the table, default
    ``results/<results_md>``) and ``--table-only``.
    """
    ap = script_parser(doc, script)
    ap.add_argument("--rounds", type=int, default=study.rounds, help=f"default: {study.rounds} ({study.path.name})")
    for key in lists:
        flag, kind = LIST_OPTIONS[key]
        default = study.grid[key] if key in study.grid else [study.base[key]]
        ap.add_argument(flag, dest=key, type=comma_list(kind), default=default,
                        help=f"comma-separated; default: {','.join(map(str, default))} ({study.path.name})")
    ap.add_argument("--out", type=Path, default=results_path(out), help="folder of the cells (default: %(default)s)")
    ap.add_argument("--results-md", type=Path, default=results_path(results_md),
                    help="the table written (default: %(default)s)")
    ap.add_argument("--table-only", action="store_true", help="tabulate finished cells, run nothing")
    return ap


def add_spread_option(ap: argparse.ArgumentParser) -> None:
    """``--spread S``: every attacker adds its own noise of S benign stds per coordinate (default 0)."""
    ap.add_argument("--spread", type=float, default=0.0,
                    help="attackers' own noise in benign stds per coordinate (default: 0, identical attackers)")


def apply_spread(ap: argparse.ArgumentParser, args: argparse.Namespace, tag: str) -> None:
    """Check ``--spread`` and, when it is not 0, move the default ``--out``/``--results-md`` to
    ``<tag>_spread<S>/`` and ``<tag>_spread<S>.md`` so that spread cells and tables stay apart."""
    if args.spread < 0:
        ap.error("--spread must be >= 0")
    if args.spread:
        name = f"{tag}_spread{args.spread:g}"
        if args.out == ap.get_default("out"):
            args.out = results_path(name)
        if args.results_md == ap.get_default("results_md"):
            args.results_md = results_path(f"{name}.md")


def spread_params(spread: float) -> dict[str, Any]:
    """The base keys that give attacked cells ``spread`` (nothing for identical attackers)."""
    return {"attack_params": {"spread": spread}} if spread else {}


def attackers_text(spread: float) -> str:
    """How the attackers of a table differ, for its header."""
    if spread:
        return (f"each attacker adds its own noise of {spread:g} benign std per coordinate "
                f"(`attack_params.spread` {spread:g})")
    return "attackers identical (`attack_params.spread` 0, the paper's setting)"


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` over seeds (sd only with two or more values), ``-`` for none."""
    if not values:
        return "-"
    m = statistics.fmean(values)
    return f"{m:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{m:.3f}"


# ----- study files -----------------------------------------------------------------------------
STUDY_KEYS = {"description", "preset", "base", "grid", "concurrency", "cells", "attack_params"}


@dataclass(frozen=True)
class Study:
    """A study file: ``skymask-ray bench --grid``'s keys, plus two that only the scripts read.

    ``cells``: explicit grid points, run in order, instead of the product of ``grid``;
    ``attack_params``: per attack, the ``attack_params`` its cells run with.
    """

    path: Path
    preset: str | None
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    cells: list[dict[str, Any]] = field(default_factory=list)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return int(self.base["rounds"])

    def grids(self) -> list[dict[str, list[Any]]]:
        """One grid per explicit cell, or the study's grid."""
        return [{k: [v] for k, v in cell.items()} for cell in self.cells] if self.cells else [self.grid]


def load_study(name: str | Path) -> Study:
    """``benchmarks/studies/<name>.yaml`` (or the file ``name``), checked."""
    p = Path(name) if Path(name).suffix in (".yaml", ".yml") else STUDIES / f"{name}.yaml"
    doc = yaml.safe_load(p.read_text()) or {}
    unknown = set(doc) - STUDY_KEYS
    if unknown:
        raise ValueError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    grid = doc.get("grid") or {}
    cells = doc.get("cells") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ValueError(f"{p}: 'grid' must map keys to lists")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"{p}: 'cells' must be a list of mappings")
    base = doc.get("base") or {}
    if "rounds" not in base:
        raise ValueError(f"{p}: 'base' must set rounds")
    return Study(p, doc.get("preset"), base, grid, cells, doc.get("attack_params") or {})


# ----- cells -----------------------------------------------------------------------------------
CELL_NAME = re.compile(r"(?P<dataset>[^-]+)-(?P<model>[^-]+)-n(?P<clients>\d+)-m(?P<malicious_fraction>.+?)"
                       r"-(?P<attack>[^-]+)-(?P<defense>[^-]+)-s(?P<seed>-?\d+)")


def parse_cell_name(name: str) -> dict[str, Any]:
    """The grid coordinates of a cell folder, the inverse of :func:`skymask_ray.bench.cell_name`."""
    m = CELL_NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"{name!r} is not a cell name (dataset-model-nN-mF-attack-defense-sS)")
    d = m.groupdict()
    return {**d, "clients": int(d["clients"]), "malicious_fraction": float(d["malicious_fraction"]),
            "seed": int(d["seed"])}


def run_cells(preset: str | None, jobs: Sequence[tuple[dict[str, Any], dict[str, list[Any]]]], out: Path,
              run: bool = True) -> list[tuple[ExperimentConfig, dict[str, Any] | None]]:
    """Run (when ``run``) the cells of every ``(base, grid)`` job that are not complete under ``out``.

    Returns every cell's config with its summary (:func:`skymask_ray.bench.summarize`), None where
    the cell is not complete. Every cell is validated before anything starts; a bad value (an unknown
    attack, say) exits with its one-line message.
    """
    from skymask_ray.bench import cell_done, expand_named_grid, run_grid, summarize
    from skymask_ray.errors import ConfigError

    try:
        named = [(cfg, name) for base, grid in jobs for cfg, name in expand_named_grid(preset, None, base, grid)]
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if run:
        import ray

        from skymask_ray.runtime import init_ray

        started = init_ray(None)  # one Ray session for every job (each run_grid would start its own)
        try:
            for base, grid in jobs:
                run_grid(preset, None, base, grid, out, echo=print)
        finally:
            if started:
                ray.shutdown()
    return [(cfg, summarize(out / name) if cell_done(cfg, out / name) else None) for cfg, name in named]


def group_cells(cells: Iterable[tuple[ExperimentConfig, dict[str, Any] | None]],
                key: Callable[[ExperimentConfig], Any]) -> dict[Any, list[dict[str, Any]]]:
    """The complete cells of :func:`run_cells` grouped by ``key(config)``: one summary per seed, in run order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for cfg, s in cells:
        if s is not None:
            groups.setdefault(key(cfg), []).append(s)
    return groups


# ----- Markdown --------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` (``---``) or ``r`` (``---:``), default all l."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not have one letter per column ({len(header)})")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- memory ----------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def used_mb() -> float:
    """MemTotal - MemAvailable of this machine, in MB."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def run_sampled(cmd: list[str], interval: float = 0.1, baseline_s: float = 1.0) -> dict[str, float]:
    """Run ``cmd`` (it must succeed); returns its wall time and the peak host memory it added, in MB.

    Summing every process's peak RSS counts shared pages once per process: torch's ~250 MB of
    mapped libraries, and Ray's object store pages in /dev/shm in every process that reads them.
    The machine-level figure has no double counting: used memory (:func:`used_mb`, object store
    included) sampled every ``interval`` seconds while the command runs, minus the median used
    before it started. It includes Ray's own daemons, which belong to the run; other jobs on the
    machine add noise, so run it alone.
    """
    before = []
    end = time.perf_counter() + baseline_s
    while time.perf_counter() < end:
        before.append(used_mb())
        time.sleep(interval)
    base = statistics.median(before)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], used_mb())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True)
    finally:
        done.set()
        t.join()
    return {"wall_s": time.perf_counter() - t0, "host_peak_mb": peak[0] - base, "host_baseline_mb": base}
