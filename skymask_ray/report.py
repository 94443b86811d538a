"""Plots (PNG) and a Markdown summary from ``rounds.parquet`` and ``masks.parquet`` result files.

:func:`make_report` reads every run below the given paths and writes

- ``accuracy_vs_round.png``: test accuracy per round, one panel per attack
  (and malicious fraction), one line per defense and setting, averaged over
  seeds with a min..max band;
- ``fraction_sweep.png``: final accuracy, mean TPR and mean FPR against the
  malicious fraction (means over seeds);
- ``scaling.png``: mean round time and memory in use against the client count;
- ``cohort_sweep.png`` (only where some run samples a cohort; skipped with one cohort size K): final
  accuracy, mean TPR, mean FPR, and the FPR of the rounds whose cohort held no
  attacker, against K;

Colour always encodes the defense; line style and marker encode whatever else
varies between the runs (client count, cohort, attack, dataset, ...). A run's
cohort K is the clients sampled per round (the row's ``cohort``); it is shown
only where some run samples fewer than all its clients. Any other config
field (from the rows' ``config`` column, e.g. ``skymask.select`` or
``attack_params.spread``) whose value differs between the runs tells them
apart as well: in labels, file names and summary columns, so two runs of a
study never share a line or a plot file.
- ``mask_pca_<run>_r<round>.png`` per SkyMask run: the PCA of one round's
  binarised masks (benign/malicious colours, accepted/rejected markers, the
  server as a star, GMM clusters outlined);
- ``summary.md``: one table row per run.

A plot whose data is absent (one malicious fraction, one client count, no
``masks.parquet``) is skipped; the reasons are logged, listed in
``summary.md`` and returned by :func:`build_report`. Round axes have integer
ticks. A run whose defense never rejects a client (``tp + fp`` is 0 in every
round, or no TPR/FPR recorded) has no TPR/FPR: it is left out of those panels
and shown as ``n/a`` in ``summary.md``, not drawn as a rate of 0; unless a
selection rule chose to accept everyone (``single_component``, SkyMask's
``bic``/``silhouette``) or the same defense rejected clients in another run of
the report, which makes accepting everyone a decision with a rate of 0. A result file
that is not readable Parquet, or an output folder that is an existing file, is
a ValueError naming the path.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator

from .config import HOW_IT_RAN
from .results import RUN_KEYS, flat_config, read_parquet

log = logging.getLogger(__name__)

METRICS = (
    "accuracy", "loss", "backdoor_success", "tpr", "fpr", "t_round", "t_clients",
    "t_server", "t_attack", "t_defense", "t_eval", "peak_rss_mb", "mem_pss_mb", "malicious_in_cohort",
)
KEYS = (*RUN_KEYS, "cohort")  # what tells runs apart: the row's run keys and the cohort size K
SHORT = {"clients": "N", "malicious_fraction": "f", "seed": "seed", "cohort": "K"}
SAME_AS_KEY = {"data.dataset", "model", "clients", "malicious_fraction", "attack", "defense", "seed", "cohort"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 120


@dataclass
class Run:
    """One experiment: its identifying keys and per-round metric arrays (sorted by round)."""

    source: Path
    key: dict[str, Any]
    rounds: np.ndarray
    metrics: dict[str, np.ndarray]
    fallbacks: int
    never_rejects: bool = False  # no client rejected in any round: TPR/FPR are absent (NaN), not 0
    settings: dict[str, Any] = field(default_factory=dict)  # the run's config, flattened to dotted names
    withheld: dict[str, np.ndarray] = field(default_factory=dict)  # recorded TPR/FPR hidden by never_rejects

    def last(self, name: str) -> float:
        """The value at the last round where ``name`` is defined (NaN if never)."""
        v = self.metrics[name]
        finite = np.flatnonzero(np.isfinite(v))
        return float(v[finite[-1]]) if finite.size else math.nan

    def mean(self, name: str) -> float:
        """Mean over the rounds where ``name`` is defined (NaN if never)."""
        v = self.metrics[name]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else math.nan

    def peak(self, name: str) -> float:
        """Maximum over the rounds where ``name`` is defined (NaN if never)."""
        v = self.metrics[name]
        v = v[np.isfinite(v)]
        return float(v.max()) if v.size else math.nan

    @property
    def sampled(self) -> bool:
        """A cross-device run: its cohort is smaller than its population."""
        return self.key["cohort"] != self.key["clients"]

    def fpr_without_attackers(self) -> tuple[float, int]:
        """(mean FPR, count) over the rounds whose cohort held no attacker (NaN, 0 if none)."""
        mask = (self.metrics["malicious_in_cohort"] == 0) & np.isfinite(self.metrics["fpr"])
        return (float(self.metrics["fpr"][mask].mean()) if mask.any() else math.nan), int(mask.sum())

    def slug(self) -> str:
        """A file-name-safe name for this run."""
        k = self.key
        text = (f"{k['dataset']}-{k['model']}-N{k['clients']}" + (f"-K{k['cohort']}" if self.sampled else "")
                + f"-f{k['malicious_fraction']:g}-{k['attack']}-{k['defense']}-s{k['seed']}"
                + "".join(f"-{name}={_text(k[name])}" for name in _added(k)))
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@dataclass
class Report:
    """What :func:`build_report` wrote, and which plots it skipped and why."""

    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def make_report(inputs: Sequence[str | Path], out_dir: str | Path, round: int | None = None) -> list[Path]:
    """Write the plots and ``summary.md`` for every run below ``inputs`` into ``out_dir``.

    ``inputs`` are ``rounds.parquet`` files or directories searched for them;
    ``round`` picks the round of the mask PCA plots (default: each run's last).
    Returns the paths written; skipped plots are logged (see :func:`build_report`).
    """
    return build_report(inputs, out_dir, mask_round=round).files


def build_report(inputs: Sequence[str | Path], out_dir: str | Path, mask_round: int | None = None) -> Report:
    """Like :func:`make_report`, returning the skipped plots with their reasons as well."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} is an existing file, not a folder")
    files = find_rounds_files(inputs)
    runs = [run for f in files for run in load_runs(f)]
    if not runs:
        raise ValueError(f"no rounds recorded in {', '.join(str(f) for f in files)}")
    tell_apart(runs)
    share_rejection_evidence(runs)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()

    def skip(name: str, reason: str) -> None:
        report.skipped[name] = reason
        log.info("report: skipped %s: %s", name, reason)

    def save(fig: Figure, name: str) -> None:
        fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
        report.files.append(out / name)

    plots = (
        ("accuracy vs round", _accuracy_gap(runs), plot_accuracy, "accuracy_vs_round.png"),
        ("accuracy and TPR/FPR vs malicious fraction", _sweep_gap(runs, "malicious_fraction"),
         plot_fraction_sweep, "fraction_sweep.png"),
        ("round time and memory vs client count", _sweep_gap(runs, "clients"), plot_scaling, "scaling.png"),
    )
    if any(r.sampled for r in runs):  # cross-device runs only: elsewhere the plot does not apply (not "skipped")
        plots += (("accuracy and detection vs cohort size", _sweep_gap(runs, "cohort"), plot_cohort_sweep,
                   "cohort_sweep.png"),)
    for name, gap, plot, file_name in plots:
        if gap is None:
            save(plot(runs), file_name)
        else:
            skip(name, gap)
    for f in files:
        run = next((r for r in runs if r.source == f), None)
        if run is None or run.key["defense"] != "skymask":
            continue
        name = f"mask PCA of {run.slug()}"
        masks_path = next((p for p in (f.parent / "_masks.parquet", f.parent / "masks.parquet") if p.exists()),
                          f.parent / "_masks.parquet")
        if not masks_path.exists():
            skip(name, f"no _masks.parquet next to {f}")
            continue
        masks = _read(masks_path)
        available = sorted(set(masks.column("round").to_pylist()))
        chosen = mask_round if mask_round is not None else (available[-1] if available else None)
        if chosen is None or chosen not in available:
            skip(name, f"round {chosen} not in {masks_path} ({_span(available)})")
            continue
        save(plot_mask_pca(masks, chosen, run), f"mask_pca_{run.slug()}_r{chosen}.png")

    summary = out / "summary.md"
    summary.write_text(summary_markdown(runs, report, out))
    report.files.append(summary)
    return report


def find_rounds_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Every ``rounds.parquet`` named by or below ``inputs`` (each input must exist)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            below = sorted(p.rglob("rounds.parquet"))
            if not below:
                raise FileNotFoundError(f"no rounds.parquet below {p}")
            found += below
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"result path {p} does not exist")
    if not found:
        raise ValueError("no result paths given")
    return list(dict.fromkeys(f.resolve() for f in found))


def load_runs(path: Path) -> list[Run]:
    """The runs in one ``rounds.parquet`` (normally one) or a study's rows file (one run per ``cell``), rows
    sorted by round, last row per round kept.

    A run whose defense rejected no client in any round, and never decided to (no ``single_component``
    round), gets ``never_rejects`` and NaN TPR/FPR.
    """
    table = _read(path)
    missing = [c for c in (*RUN_KEYS, "round") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a rounds file: it lacks columns {missing}")
    keys = table.column("cell").to_pylist() if "cell" in table.column_names else \
        list(zip(*(table.column(c).to_pylist() for c in RUN_KEYS)))
    runs = []
    for key in dict.fromkeys(keys):
        rows = np.array([i for i, k in enumerate(keys) if k == key])
        sub = table.take(pa.array(rows))
        rounds = sub.column("round").to_numpy()
        _, last_rev = np.unique(rounds[::-1], return_index=True)
        order = len(rounds) - 1 - last_rev
        metrics = {m: _floats(sub, m)[order] for m in METRICS}
        fallbacks = int(np.nansum(_floats(sub, "fallback")[order])) if "fallback" in sub.column_names else 0
        decided = bool((_floats(sub, "single_component")[order] == 1).any())  # accepted all by a rule's choice
        never = not decided and _never_rejects((_floats(sub, "tp") + _floats(sub, "fp"))[order], metrics)
        withheld = {}
        if never:
            withheld = {m: metrics[m] for m in ("tpr", "fpr")}
            metrics["tpr"] = metrics["fpr"] = np.full(len(order), np.nan)
        run_key = {c: sub.column(c)[0].as_py() for c in RUN_KEYS}
        cohorts = _floats(sub, "cohort")  # files from before populations have no cohort: every client trained
        run_key["cohort"] = int(cohorts[np.isfinite(cohorts)][0]) if np.isfinite(cohorts).any() else run_key["clients"]
        settings = flat_config(sub.column("config")[0].as_py() or {}) if "config" in sub.column_names else {}
        runs.append(Run(path, run_key, rounds[order], metrics, fallbacks, never, settings, withheld))
    return runs


def share_rejection_evidence(runs: list[Run]) -> None:
    """A defense seen rejecting in one run can reject: its runs that rejected nobody get their rates back.

    Accepting everyone is then the defense's decision (e.g. FLAME's one cluster holding every
    client: TPR 0 where there were attackers), unlike a rule that never rejects anyone (FedAvg).
    """
    rejecting = {r.key["defense"] for r in runs if not r.never_rejects}
    for run in runs:
        if run.never_rejects and run.key["defense"] in rejecting:
            run.metrics.update(run.withheld)
            run.never_rejects, run.withheld = False, {}


def tell_apart(runs: list[Run]) -> list[str]:
    """Add to every run's key the config fields whose values differ between ``runs``; returns their names.

    Fields that only say how a run ran (``HOW_IT_RAN``) and those already in ``KEYS`` are left out.
    A field that a run's file does not record (written before the field existed) does not count as
    a difference; such a run shows it as None.
    """
    names = sorted({n for r in runs for n in r.settings} - SAME_AS_KEY - HOW_IT_RAN)
    varying = [n for n in names if len({_hashable(r.settings[n]) for r in runs if n in r.settings}) > 1]
    for run in runs:
        run.key.update({n: _hashable(run.settings.get(n)) for n in varying})
    return varying


def _added(key: dict[str, Any]) -> list[str]:
    """The config fields :func:`tell_apart` added to a run's key (the same for every run of a report)."""
    return [k for k in key if k not in KEYS]


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _never_rejects(rejected: np.ndarray, metrics: dict[str, np.ndarray]) -> bool:
    """No client rejected in any round where it is known, or no TPR/FPR recorded at all."""
    known = rejected[np.isfinite(rejected)]
    if known.size and not (known > 0).any():
        return True
    return not (np.isfinite(metrics["tpr"]).any() or np.isfinite(metrics["fpr"]).any())


def _read(path: Path) -> pa.Table:
    """A Parquet file; a file that is not readable Parquet is a one-line ValueError naming it."""
    try:
        return read_parquet(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, pa.ArrowException) as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        message = detail if str(path) in detail else f"{path} is not a readable Parquet file ({detail[:160]})"
        raise ValueError(message) from None


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls; all NaN if the column is absent."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _span(values: Sequence[int]) -> str:
    return f"rounds {values[0]}..{values[-1]}" if values else "no rounds"


def _accuracy_gap(runs: list[Run]) -> str | None:
    if not any(np.isfinite(r.metrics["accuracy"]).any() for r in runs):
        return "no run recorded a test accuracy"
    return None


def _sweep_gap(runs: list[Run], axis: str) -> str | None:
    values = sorted({r.key[axis] for r in runs})
    if len(values) < 2:
        return f"needs runs at two or more values of {axis}; all runs have {axis}={values[0]:g}"
    return None


# ----- labelling helpers ---------------------------------------------------------------------


def _keys(keys: list[dict[str, Any]]) -> list[str]:
    """The keys worth naming: the cohort only where some run samples fewer than all its clients."""
    sampled = any(d["cohort"] != d["clients"] for d in keys)
    return [k for k in KEYS if k != "cohort" or sampled] + (_added(keys[0]) if keys else [])


def _varying(keys: list[dict[str, Any]], exclude: Iterable[str]) -> list[str]:
    """The run keys (outside ``exclude``) whose values differ between ``keys``."""
    skip = set(exclude)
    return [k for k in _keys(keys) if k not in skip and len({d[k] for d in keys}) > 1]


def _label(key: dict[str, Any], fields: Iterable[str]) -> str:
    parts = []
    for f in fields:
        text = _text(key[f])
        parts.append(f"{SHORT[f]}={text}" if f in SHORT else text if f in KEYS else f"{f}={text}")
    return " ".join(parts)


def _sort_key(values: Iterable[Any]) -> tuple[Any, ...]:
    """Sorts tuples of mixed numbers and strings: numbers numerically, then strings."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)


class _Styles:
    """Colour per defense, line style and marker per combination of the other varying keys.

    Keeps the legend short: one entry per defense plus one per style, instead of
    one per line.
    """

    def __init__(self, keys: list[dict[str, Any]], exclude: Iterable[str]) -> None:
        defenses = sorted({k["defense"] for k in keys})
        cmap = colormaps["tab10" if len(defenses) <= 10 else "tab20"]
        self.colours = {d: cmap(i % cmap.N) for i, d in enumerate(defenses)}
        self.fields = _varying(keys, {"defense", *exclude})
        combos = sorted({tuple(k[f] for f in self.fields) for k in keys}, key=_sort_key)
        labels = [_label(dict(zip(self.fields, c)), self.fields) for c in combos]
        self.styles = {t: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]) for i, t in enumerate(labels)}

    def of(self, key: dict[str, Any]) -> dict[str, Any]:
        linestyle, marker = self.styles[_label(key, self.fields)]
        return {"color": self.colours[key["defense"]], "linestyle": linestyle, "marker": marker}

    def legend(self, fig: Figure) -> None:
        handles = [Line2D([], [], color=c, linewidth=2.5, label=d) for d, c in self.colours.items()]
        if len(self.styles) > 1:
            handles += [Line2D([], [], color="dimgray", linestyle=ls, marker=m, label=t)
                        for t, (ls, m) in self.styles.items()]
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="defense / run")


def _grid(n: int, width: float = 5.0, height: float = 3.8, cols: int = 3) -> tuple[Figure, list[Axes]]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols + 2.5, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _context(keys: list[dict[str, Any]], exclude: Iterable[str]) -> str:
    """The run keys shared by all ``keys`` (outside ``exclude``), for a figure title."""
    skip = set(exclude)
    shared = [k for k in _keys(keys) if k not in skip and len({d[k] for d in keys}) == 1]
    return _label(keys[0], shared)


# ----- plots ---------------------------------------------------------------------------------


def _mean_curve(runs: list[Run], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rounds where any run defines ``name``, with the mean, min and max over the runs."""
    rounds = np.unique(np.concatenate([r.rounds[np.isfinite(r.metrics[name])] for r in runs]))
    values = np.full((len(runs), len(rounds)), np.nan)
    for i, run in enumerate(runs):
        ok = np.isfinite(run.metrics[name])
        values[i, np.searchsorted(rounds, run.rounds[ok])] = run.metrics[name][ok]
    counts = np.isfinite(values).sum(axis=0)
    filled = np.where(np.isfinite(values), values, 0.0)
    mean = filled.sum(axis=0) / counts
    lo = np.where(np.isfinite(values), values, np.inf).min(axis=0)
    hi = np.where(np.isfinite(values), values, -np.inf).max(axis=0)
    return rounds, mean, lo, hi


def plot_accuracy(runs: list[Run]) -> Figure:
    """Accuracy against round: a panel per (attack, malicious fraction), a line per defense and run
    setting (mean over seeds, shaded between the lowest and highest seed)."""
    runs = [r for r in runs if np.isfinite(r.metrics["accuracy"]).any()]
    panel_keys = ["attack"] + (["malicious_fraction"] if len({r.key["malicious_fraction"] for r in runs}) > 1 else [])
    panels: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        panels[tuple(run.key[k] for k in panel_keys)].append(run)
    styles = _Styles([r.key for r in runs], {*panel_keys, "seed"})
    fig, axes = _grid(len(panels))
    for ax, (panel, members) in zip(axes, sorted(panels.items(), key=lambda kv: _sort_key(kv[0]))):
        lines: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
        for run in members:
            lines[tuple(v for k, v in run.key.items() if k != "seed")].append(run)
        for group in lines.values():
            rounds, mean, lo, hi = _mean_curve(group, "accuracy")
            style = styles.of(group[0].key)
            ax.plot(rounds, mean, markersize=3 if len(rounds) <= 30 else 0, **style)
            if len(group) > 1:
                ax.fill_between(rounds, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
        ax.set_title(f"attack: {panel[0]}" + (f", f={panel[1]:g}" if len(panel) > 1 else ""))
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    styles.legend(fig)
    seeds = len({r.key["seed"] for r in runs})
    band = f"; mean over {seeds} seeds, band = min..max" if seeds > 1 else ""
    fig.suptitle(f"Test accuracy per round ({_context([r.key for r in runs], {*panel_keys, 'defense', 'seed'})}{band})")
    return fig


def _plot_sweep(ax: Axes, runs: list[Run], x: str, value: Callable[[Run], float], styles: _Styles) -> int:
    """One line per setting: mean over seeds of ``value(run)`` against ``x``; returns lines drawn."""
    lines: dict[tuple[Any, ...], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    keys: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        line = tuple(v for k, v in run.key.items() if k not in (x, "seed"))
        keys[line] = run.key
        v = value(run)
        if np.isfinite(v):
            lines[line][run.key[x]].append(v)
    for line, points in lines.items():
        xs = sorted(points)
        ax.plot(np.array(xs, dtype=float), [float(np.mean(points[v])) for v in xs], **styles.of(keys[line]))
    ax.grid(alpha=0.3)
    return len(lines)


def plot_fraction_sweep(runs: list[Run]) -> Figure:
    """Final accuracy, mean TPR and mean FPR against the malicious fraction (mean over seeds)."""
    fig, axes = _grid(3, width=4.6)
    styles = _Styles([r.key for r in runs], {"malicious_fraction", "seed"})
    panels = (
        ("final test accuracy", lambda r: r.last("accuracy"), False),
        ("mean TPR (malicious rejected)", lambda r: r.mean("tpr"), True),
        ("mean FPR (benign rejected)", lambda r: r.mean("fpr"), True),
    )
    silent = sorted({r.key["defense"] for r in runs if r.never_rejects})
    for ax, (ylabel, value, rate) in zip(axes, panels):
        drawn = _plot_sweep(ax, runs, "malicious_fraction", value, styles)
        ax.set_xlabel("malicious fraction f")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        title = ylabel if drawn else f"{ylabel}: " + ("no run rejected a client" if rate and silent else "not recorded")
        if rate and silent and drawn:
            title += "\nnot drawn (rejected no client): " + ", ".join(silent)
        ax.set_title(title, **({"fontsize": "medium"} if "\n" in title else {}))
    styles.legend(fig)
    fig.suptitle("Accuracy and detection vs malicious fraction "
                 f"({_context([r.key for r in runs], {'malicious_fraction', 'seed', 'defense'})}; mean over seeds)")
    return fig


def plot_scaling(runs: list[Run]) -> Figure:
    """Mean round time and memory against the number of clients (mean over seeds).

    Memory is the run's largest memory in use (summed PSS: shared pages counted once) where every
    run records it, otherwise the sum of per-process peak RSS (which counts shared pages in each).
    """
    fig, axes = _grid(2, width=5.2)
    styles = _Styles([r.key for r in runs], {"clients", "seed"})
    pss = all(np.isfinite(r.metrics["mem_pss_mb"]).any() for r in runs)  # older files lack it
    panels = (
        ("mean round time (s)", lambda r: r.mean("t_round")),
        ("memory in use, PSS (MB)", lambda r: r.peak("mem_pss_mb")) if pss
        else ("sum of per-process peak RSS (MB)", lambda r: r.peak("peak_rss_mb")),
    )
    counts = sorted({r.key["clients"] for r in runs})
    for ax, (ylabel, value) in zip(axes, panels):
        drawn = _plot_sweep(ax, runs, "clients", value, styles)
        if counts[-1] / max(counts[0], 1) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.set_xlabel("clients N")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.set_title(ylabel if drawn else f"{ylabel}: not recorded")
    styles.legend(fig)
    fig.suptitle(f"Cost vs client count ({_context([r.key for r in runs], {'clients', 'seed', 'defense'})}; "
                 "mean over seeds)")
    return fig


def plot_cohort_sweep(runs: list[Run]) -> Figure:
    """Final accuracy, mean TPR, mean FPR, and the mean FPR of rounds whose cohort held no attacker,
    against the cohort size K (mean over seeds)."""
    fig, axes = _grid(4, width=4.4, cols=2)
    styles = _Styles([r.key for r in runs], {"cohort", "seed"})
    panels = (
        ("final test accuracy", lambda r: r.last("accuracy")),
        ("mean TPR (malicious rejected)", lambda r: r.mean("tpr")),
        ("mean FPR (benign rejected)", lambda r: r.mean("fpr")),
        ("FPR, rounds without an attacker", lambda r: r.fpr_without_attackers()[0]),
    )
    sizes = sorted({r.key["cohort"] for r in runs})
    for ax, (ylabel, value) in zip(axes, panels):
        drawn = _plot_sweep(ax, runs, "cohort", value, styles)
        if sizes[-1] / max(sizes[0], 1) >= 8:
            ax.set_xscale("log")
            ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.3)  # set, not inferred: a panel without lines keeps the axis
        else:
            pad = 0.05 * (sizes[-1] - sizes[0]) or 1
            ax.set_xlim(sizes[0] - pad, sizes[-1] + pad)
        ax.set_xticks(sizes, [str(c) for c in sizes])
        ax.minorticks_off()
        ax.set_xlabel("cohort K (clients per round)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(ylabel if drawn else f"{ylabel}: no such round")
    styles.legend(fig)
    fig.suptitle(f"Accuracy and detection vs cohort size ({_context([r.key for r in runs], {'cohort', 'seed', 'defense'})}"
                 "; mean over seeds)")
    return fig


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points, counter-clockwise (Andrew's monotone chain)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for p in seq:
            while len(out) >= 2 and np.cross(out[-1] - out[-2], p - out[-2]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def plot_mask_pca(masks: pa.Table, round_: int, run: Run) -> Figure:
    """PCA of one round's binarised masks: truth by colour, decision by marker, GMM clusters outlined."""
    sel = masks.filter(pc.equal(masks.column("round"), round_))
    xy = np.column_stack([_floats(sel, "pc1"), _floats(sel, "pc2")])
    labels = np.asarray(sel.column("label").to_pylist())
    malicious = np.asarray(sel.column("malicious").to_pylist(), dtype=bool)
    accepted = np.asarray(sel.column("accepted").to_pylist(), dtype=bool)
    server = np.asarray(sel.column("is_server").to_pylist(), dtype=bool)

    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.subplots()
    outline = colormaps["Dark2"]
    server_labels = set(labels[server].tolist())
    handles: list[Any] = []
    for i, lab in enumerate(sorted(set(labels.tolist()))):
        members = xy[labels == lab]
        colour = outline(i % outline.N)
        hull = _hull(members)
        if len(hull) >= 3:
            ax.add_patch(Polygon(hull, closed=True, facecolor=(*colour[:3], 0.08), edgecolor=colour,
                                 linestyle="--", linewidth=1.2))
        top = members[np.argmax(members[:, 1])]
        ax.annotate(f"cluster {lab}", top, textcoords="offset points", xytext=(0, 9), ha="center",
                    color=colour, fontsize="small", fontweight="bold")
        tag = " (server's)" if lab in server_labels else ""
        handles.append(Line2D([], [], color=colour, linestyle="--", label=f"GMM cluster {lab}{tag}: {len(members)}"))

    clients = ~server
    kinds = (
        ("benign, accepted", ~malicious & accepted, "tab:blue", "o"),
        ("benign, rejected", ~malicious & ~accepted, "tab:blue", "X"),
        ("malicious, accepted", malicious & accepted, "tab:red", "o"),
        ("malicious, rejected", malicious & ~accepted, "tab:red", "X"),
    )
    for name, mask, colour, marker in kinds:
        pick = clients & mask
        if pick.any():
            ax.scatter(xy[pick, 0], xy[pick, 1], c=colour, marker=marker, s=36, alpha=0.8,
                       edgecolors="white" if marker == "o" else "none", linewidths=0.5,
                       label=f"{name}: {int(pick.sum())}")
    if server.any():
        ax.scatter(xy[server, 0], xy[server, 1], marker="*", s=380, c="gold", edgecolors="black",
                   linewidths=1.0, zorder=5, label="server (root data)")
    point_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=point_handles + handles, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_xlabel("PC1 of binarised masks")
    ax.set_ylabel("PC2 of binarised masks")
    ax.grid(alpha=0.3)
    k = run.key
    ax.set_title(f"SkyMask masks, round {round_}\n{k['dataset']}/{k['model']}, N={k['clients']}, "
                 f"f={k['malicious_fraction']:g}, attack {k['attack']}, seed {k['seed']}")
    return fig


# ----- summary table -------------------------------------------------------------------------


def _cell(v: float, digits: int) -> str:
    return "—" if not np.isfinite(v) else f"{v:.{digits}f}"


NO_RATES = "n/a"  # TPR/FPR of a run whose defense never rejected a client


def summary_markdown(runs: list[Run], report: Report, out: Path) -> str:
    """The Markdown summary: one row per run, then the plots written and those skipped."""
    with_backdoor = any(np.isfinite(r.metrics["backdoor_success"]).any() for r in runs)
    keys = [tuple(r.key.values()) for r in runs]
    duplicated = len(set(keys)) < len(keys)
    sampled = any(r.sampled for r in runs)
    extra = _added(runs[0].key)
    fixed = ("rounds",)  # a config field named like a summary column gets a "config." prefix
    header = ["dataset", "model", "clients", *(["K"] if sampled else []), "f", "attack", "defense", "seed",
              *(f"config.{x}" if x in fixed else x for x in extra), "rounds",
              "final accuracy", "mean TPR", "mean FPR", *(["FPR w/o attacker (rounds)"] if sampled else []),
              "fallbacks", "mean round s", "mem in use MB", "sum of peaks MB"]
    if with_backdoor:
        header.append("final backdoor success")
    if duplicated:
        header.append("source")
    lines = [
        "# skymask-ray report",
        "",
        f"{len(runs)} run(s) from {len({r.source for r in runs})} file(s). Final accuracy and backdoor success "
        "are the values at each run's last evaluated round; TPR/FPR are means over rounds where defined "
        "(positive = rejected client); mem in use MB is the largest memory in use of the run (summed PSS of its "
        "processes, shared pages counted once: mem_pss_mb), sum of peaks MB the largest sum of per-process peak "
        "RSS (peak_rss_mb, shared pages counted in each, so it overstates)."
        + (" K: clients sampled per round; FPR w/o attacker: mean FPR over the rounds whose cohort held no "
           "attacker, with their count." if sampled else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 6 + sampled else "---:" for i in range(len(header))) + "|",
    ]
    for run in sorted(runs, key=lambda r: (tuple(str(r.key[k]) for k in KEYS[:2]), *(r.key[k] for k in KEYS[2:]),
                                          tuple(str(r.key[k]) for k in extra), str(r.source))):
        k = run.key
        quiet_fpr, quiet_rounds = run.fpr_without_attackers()
        rates = ((NO_RATES, NO_RATES) if run.never_rejects else (_cell(run.mean("tpr"), 3), _cell(run.mean("fpr"), 3)))
        if sampled:
            rates += (f"{NO_RATES if run.never_rejects else _cell(quiet_fpr, 3)} ({quiet_rounds})",)
        row = [str(k["dataset"]), str(k["model"]), str(k["clients"]), *([str(k["cohort"])] if sampled else []),
               f"{k['malicious_fraction']:g}", str(k["attack"]), str(k["defense"]), str(k["seed"]),
               *(_text(k[x]) for x in extra), str(len(run.rounds)), _cell(run.last("accuracy"), 4), *rates,
               str(run.fallbacks), _cell(run.mean("t_round"), 2), _cell(run.peak("mem_pss_mb"), 0),
               _cell(run.peak("peak_rss_mb"), 0)]
        if with_backdoor:
            row.append(_cell(run.last("backdoor_success"), 4))
        if duplicated:
            row.append(str(run.source))
        lines.append("| " + " | ".join(row) + " |")
    silent = sorted({r.key["defense"] for r in runs if r.never_rejects})
    if silent:
        lines += ["", f"{NO_RATES}: the defense rejected no client in any round of that run ({', '.join(silent)}), "
                  "so its TPR/FPR are undefined, not 0; those runs are left out of the TPR/FPR plots."]
    pngs = [p for p in report.files if p.suffix == ".png"]
    if pngs:
        lines += ["", "## Plots"]
        for p in pngs:
            lines += ["", f"![{p.stem}]({p.relative_to(out)})"]
    if report.skipped:
        lines += ["", "## Skipped plots", ""] + [f"- {name}: {why}" for name, why in report.skipped.items()]
    return "\n".join(lines) + "\n"
