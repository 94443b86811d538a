"""What the measuring scripts share: paths, the click command and its list options, the command that made a
result, and memory sampling.

Studies (grids of runs and their tables) are not scripts: they are
``benchmarks/studies/*.yaml``, run by ``skymask-ray bench --grid`` and rendered by
``skymask-ray report --table``. The scripts here measure something else
(throughput against Flower, population memory, mask and defense cost, a GPU
check); every one runs from the repository root as ``python -m benchmarks.NAME``
and writes under ``benchmarks/results/``, resolved from this folder, never from
the working directory.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import pyarrow as pa

from skymask_ray.results import read_parquet
from skymask_ray.storage import atomic_write_text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
STUDIES = BENCH / "studies"


# ----- paths and the command that made a result ------------------------------------------------
def results_path(*parts: str) -> Path:
    """``benchmarks/results/<parts>`` as an absolute path, whatever the working directory."""
    return RESULTS.joinpath(*parts)


def write_result(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, creating its folder; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(p, text)


def read_table(path: str | Path) -> pa.Table:
    """A Parquet file a script reads; one that is not readable Parquet is a ClickException (one clear line)."""
    try:
        return read_parquet(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


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


def command_line(script: str | Path, argv: Sequence[str] | None = None, drop: Iterable[str] = ("--report-only",)) -> str:
    """The command that reproduces a result: :func:`invocation` and its arguments (``sys.argv``), less ``drop``."""
    args = sys.argv[1:] if argv is None else list(argv)
    skip = set(drop)
    return " ".join([invocation(script), *(a for a in args if a not in skip)])


# ----- the command line ------------------------------------------------------------------------
def script(doc: str | None) -> Callable[[Callable[..., Any]], click.Command]:
    """A script's click command: ``-h``, every default shown, the docstring as help."""
    return click.command(help=doc, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})


def comma_list(kind: Callable[[str], Any] = str) -> Callable[[click.Context, click.Parameter, Any], list[Any] | None]:
    """A click callback: ``"a,b,c"`` as a list of ``kind`` (a list default passes through)."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> list[Any] | None:
        if value is None or isinstance(value, list):
            return value
        try:
            return [kind(v.strip()) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None

    return parse


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
