"""What a user sees while a run goes: one line per finished round, a progress bar on a terminal."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import click


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _gb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.1f}"


def round_line(row: dict[str, Any], rates: bool = True) -> str:
    """The one-line progress display of a finished round; ``rates`` False (a defense that cannot reject,
    FedAvg) shows TPR/FPR as ``-``, not 0."""
    return (
        f"round {row['round']:>3} | acc {_fmt(row['accuracy'])} | TPR {_fmt(row['tpr'] if rates else None, '.2f')} "
        f"FPR {_fmt(row['fpr'] if rates else None, '.2f')}{' FALLBACK' if row['fallback'] else ''} | "
        f"clients {row['t_clients']:.1f}s server {row['t_server']:.1f}s attack {row['t_attack']:.1f}s "
        f"defense {row['t_defense']:.1f}s eval {row['t_eval']:.1f}s | round {row['t_round']:.1f}s | "
        f"mem {_gb(row.get('mem_pss_mb'))} GB in use (PSS)"
    )


class _Lines:
    """Stand-in for a progress bar off a terminal: only the lines are printed."""

    n = 0

    def write(self, line: str) -> None:
        click.echo(line)

    def refresh(self) -> None:
        pass

    def update(self, k: int = 1) -> None:
        self.n += k

    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(total: int, unit: str) -> Any:
    """A tqdm bar with ETA on a terminal; plain lines (no bar) when output is not a terminal."""
    if not sys.stderr.isatty():
        return _Lines()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True, leave=False)


def setup_lines(bar: Any) -> Callable[[str], None] | None:
    """Show the set-up phases (data, workers, compiled kernel) on a terminal; nothing off one."""
    if not sys.stderr.isatty():
        return None
    return lambda phase: bar.write(f"setup: {phase}")
