"""A study's declared tables, rendered from its rows: one summary per run, then a pivot per table.

A run is one cell of a study (one config and seed). :func:`run_summaries`
turns the round rows into one line per run: its config as dotted columns
(``attack``, ``skymask.select``, ``attack_params.spread``, ...) and its metrics
(final accuracy, mean TPR/FPR over rounds, ...; :data:`METRICS`, and any other
numeric column of the rows: mean over rounds, or the largest for ``*_mb``).
:func:`render_table` groups the runs by a table's ``rows`` and ``columns`` keys and
writes each group's values over its runs (by default mean ± sd over the seeds).

TPR and FPR are shown as ``-`` for a defense that rejected no client in any
round of any run of the study (FedAvg, median, ... by construction), not as a
rate of 0; a rule that decided to accept everyone (``single_component``) counts
as rejecting. A group the study declares but whose runs are missing reads
``not run``; one with some of its runs reads ``(k of n runs)``.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError
from .markdown import markdown_table
from .results import COLUMNS, flat_config

AGGREGATIONS = ("mean_sd", "mean")  # a table's aggregation over the runs of a group (its seeds)
VALUE_AGGREGATIONS = (*AGGREGATIONS, "min", "max", "sum", "list")
_VALUE = re.compile(r"(?P<metric>[a-z][a-z0-9_]*)(?::(?P<agg>[a-z_]+)(?:\((?P<label>[a-z][a-z0-9_.]*)\))?)?")
KEY_LABELS = {"malicious_fraction": "malicious", "data.dataset": "dataset", "defense_params.pre": "pre-aggregator",
              "clients": "N", "cohort": "K"}
COLUMN_HEADERS = {  # row columns shown as values: per-run means over rounds (largest for memory)
    "t_clients": "clients s", "t_server": "server s", "t_attack": "attack s", "t_defense": "defense s",
    "t_eval": "eval s", "t_round": "round s", "t_mask_train": "mask training s", "t_mask_cluster": "clustering s",
    "mem_pss_mb": "mem in use MB", "peak_rss_mb": "sum of peaks MB", "host_peak_mb": "host peak MB",
    "wall_s": "command wall s",
}


@dataclass(frozen=True)
class Metric:
    """How one metric is shown: header, decimals, whether it is a detection rate, a fixed aggregation."""

    header: str
    digits: int
    rate: bool = False  # TPR/FPR: `-` for a defense that rejects no client
    agg: str | None = None  # always this aggregation (else the value's, the default's or the table's)
    default: str | None = None  # the aggregation when the value names none
    about: str = ""  # one phrase for the table's legend


METRICS: dict[str, Metric] = {
    "accuracy": Metric("final accuracy", 3, about="final accuracy: at the last evaluated round"),
    "backdoor": Metric("backdoor success", 2, default="mean", about="backdoor success: at the last evaluated round "
                       "(triggered non-target test images), in brackets in a cell"),
    "tpr": Metric("mean TPR", 3, rate=True),
    "fpr": Metric("mean FPR", 3, rate=True),
    "detection": Metric("TPR/FPR", 2, rate=True, agg="mean", about="TPR/FPR in a cell: means over rounds and "
                       "runs"),
    "fpr_no_attacker": Metric("FPR w/o attacker", 3, rate=True,
                              about="FPR w/o attacker: mean FPR of the rounds whose cohort held no attacker"),
    "imperfect_rounds": Metric("rounds not TPR 1 / FPR 0", 0, rate=True, agg="list",
                               about="rounds not TPR 1 / FPR 0: per run, in seed order"),
    "one_cluster": Metric("one-cluster rounds", 0, about="one-cluster rounds: rounds where the rule kept one "
                          "cluster (everyone accepted), of all rounds"),
    "attackers": Metric("attackers per cohort", 0, about="attackers per cohort: fewest-most in a round"),
    "seeds": Metric("seeds", 0),
    "fallbacks": Metric("fallback rounds", 0, agg="sum"),
}


@dataclass(frozen=True)
class Value:
    """One entry of a table's ``values``: ``metric``, ``metric:agg`` or ``metric:min(key)`` / ``max(key)``."""

    metric: str
    agg: str | None = None
    label: str | None = None  # min/max: the key whose value names the extreme run, e.g. attack

    @property
    def header(self) -> str:
        base = METRICS[self.metric].header if self.metric in METRICS else COLUMN_HEADERS.get(self.metric, self.metric)
        if self.agg in ("min", "max"):
            base = f"{'lowest' if self.agg == 'min' else 'highest'} {base}"
        elif self.agg in ("mean", "sum") and not base.startswith(self.agg):
            base = f"{self.agg} {base}"
        return base + (f" ({self.label})" if self.label else "")


def parse_value(text: str) -> Value:
    """A ``values`` entry; ConfigError if it is not ``metric``, ``metric:agg`` or ``metric:min|max(key)``."""
    m = _VALUE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"table value {text!r} is not METRIC, METRIC:AGG or METRIC:min(KEY)")
    agg, label = m["agg"], m["label"]
    if agg is not None and agg not in VALUE_AGGREGATIONS:
        raise ConfigError(f"table value {text!r}: aggregation {agg!r} is not one of {', '.join(VALUE_AGGREGATIONS)}")
    if label is not None and agg not in ("min", "max"):
        raise ConfigError(f"table value {text!r}: only min and max name a key in brackets")
    metric = METRICS.get(m["metric"])
    if metric is not None and metric.agg is not None and agg is not None:
        raise ConfigError(f"table value {text!r}: {m['metric']} has a fixed aggregation ({metric.agg})")
    return Value(m["metric"], agg, label)


def check_value(text: str, where: str = "") -> None:
    """ConfigError (prefixed by ``where``) if ``text`` is not a valid ``values`` entry."""
    try:
        parse_value(text)
    except ConfigError as exc:
        raise ConfigError(where + str(exc)) from None


@dataclass(frozen=True)
class TableSpec:
    """A table a study declares: runs filtered by ``where``/``exclude``, grouped by ``rows`` x ``columns``."""

    title: str
    rows: tuple[str, ...]
    values: tuple[str, ...] = ("accuracy",)
    columns: tuple[str, ...] = ()
    where: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    exclude: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    note: str = ""
    aggregate: str = "mean_sd"

    def parsed_values(self) -> list[Value]:
        return [parse_value(v) for v in self.values]


# ----- runs ----------------------------------------------------------------------------------------
def _finite(s: pd.Series) -> np.ndarray:
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _last(s: pd.Series) -> float:
    v = _finite(s)
    return float(v[-1]) if v.size else math.nan


def _mean(s: pd.Series) -> float:
    v = _finite(s)
    return float(v.mean()) if v.size else math.nan


def _largest(s: pd.Series) -> float:
    v = _finite(s)
    return float(v.max()) if v.size else math.nan


def config_keys(record: dict[str, Any] | None) -> dict[str, Any]:
    """A run's config as table keys: dotted names; ``skymask.*`` only where the defense is SkyMask."""
    flat = flat_config(record or {})
    if flat.get("defense") != "skymask":
        flat = {k: (None if k.startswith("skymask.") else v) for k, v in flat.items()}
    return flat


def run_summaries(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run (``cell``) of a study's rows: its config keys and its metrics.

    The last row of each round counts (a resumed run may have rewritten one); ``rejects`` says whether
    the run's defense rejected a client (or decided to accept everyone) in any round.
    """
    numeric = [c for c in rows.columns if c not in ("round", "cell") and pd.api.types.is_numeric_dtype(rows[c])
               and not pd.api.types.is_bool_dtype(rows[c])]
    out = []
    for cell, g in rows.groupby("cell", sort=False):
        g = g.sort_values("round", kind="stable").drop_duplicates("round", keep="last")
        rec: dict[str, Any] = {c: _largest(g[c]) if c.endswith("_mb") else _mean(g[c]) for c in numeric}
        rec.update(config_keys(g["config"].iloc[-1]))
        tpr = pd.to_numeric(g["tpr"], errors="coerce")
        fpr = pd.to_numeric(g["fpr"], errors="coerce")
        single = g["single_component"].fillna(False).astype(bool) if "single_component" in g else pd.Series(False)
        quiet = g[pd.to_numeric(g.get("malicious_in_cohort"), errors="coerce") == 0] if "malicious_in_cohort" in g \
            else g.iloc[0:0]
        num_malicious = _finite(g["malicious_in_cohort"]) if "malicious_in_cohort" in g else np.array([])
        rejected = (pd.to_numeric(g["tp"], errors="coerce").fillna(0) + pd.to_numeric(g["fp"], errors="coerce").fillna(0))
        rec.update({
            "cell": cell, "seed": int(g["seed"].iloc[-1]), "defense": g["defense"].iloc[-1],
            "accuracy": _last(g["accuracy"]), "backdoor": _last(g["backdoor_success"]),
            "tpr": _mean(tpr), "fpr": _mean(fpr), "fpr_no_attacker": _mean(quiet["fpr"]) if len(quiet) else math.nan,
            "rounds_run": len(g), "one_cluster": int(single.sum()),
            "imperfect_rounds": int(((tpr.notna() & (tpr < 1)) | (fpr.notna() & (fpr > 0))).sum()),
            "attackers_min": float(num_malicious.min()) if num_malicious.size else math.nan,
            "attackers_max": float(num_malicious.max()) if num_malicious.size else math.nan,
            "fallbacks": int(g["fallback"].fillna(False).astype(bool).sum()),
            "rejects": bool((rejected > 0).any() or single.any()),
        })
        out.append(rec)
    return pd.DataFrame(out)


def rejecting_defenses(runs: pd.DataFrame) -> set[str]:
    """Defenses that rejected a client in some run: their TPR/FPR are rates, the others' are `-`."""
    return set(runs.loc[runs["rejects"], "defense"]) if len(runs) else set()


# ----- keys ----------------------------------------------------------------------------------------
def canon(value: Any) -> Any:
    """A hashable form under which equal study values group together (1 and 1.0, lists and tuples)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(canon(v) for v in value)
    return value


def key_text(path: str, value: Any) -> str:
    """A key's value as a table shows it: fractions in %, None as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if path == "malicious_fraction":
        return f"{100 * float(value):g} %"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _matches(frame: pd.DataFrame, path: str, wanted: Iterable[Any]) -> pd.Series:
    keys = {canon(w) for w in wanted}
    return frame[path].map(lambda v: canon(v) in keys) if path in frame else pd.Series(None in keys, frame.index)


def select(frame: pd.DataFrame, spec: TableSpec, path_of: Callable[[str], str]) -> pd.DataFrame:
    """The lines of ``frame`` (runs or expected cells) that the table's ``where`` keeps and ``exclude`` drops."""
    keep = pd.Series(True, index=frame.index)
    for key, wanted in spec.where.items():
        keep &= _matches(frame, path_of(key), wanted)
    for key, unwanted in spec.exclude.items():
        keep &= ~_matches(frame, path_of(key), unwanted)
    return frame[keep]


# ----- values --------------------------------------------------------------------------------------
def _number(v: float, digits: int) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def _aggregate(vals: list[float], agg: str, digits: int) -> str:
    v = [x for x in vals if math.isfinite(x)]
    if not v:
        return "-"
    if agg == "sum":
        return _number(sum(v), digits)
    if agg == "mean_sd" and len(v) > 1:
        return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"
    return _number(statistics.fmean(v), digits)


def value_text(value: Value, runs: pd.DataFrame, table_agg: str, rejecting: set[str], in_cell: bool) -> str:
    """One value over the runs of a group (ordered by seed); ``in_cell``: inside a pivot's cell."""
    metric = METRICS.get(value.metric)
    if metric is None and value.metric not in runs.columns:
        if value.metric in COLUMNS:
            return "-"  # a row column these runs predate
        raise ConfigError(f"table value {value.metric!r} is neither a metric ({', '.join(METRICS)}) nor a column "
                          "of the rows")
    digits = metric.digits if metric else (0 if value.metric.endswith("_mb") else 2)
    rated = runs[runs["defense"].isin(rejecting)] if metric is not None and metric.rate else runs
    if metric is not None and metric.rate and rated.empty:
        return "" if in_cell else "-"  # a cell leaves out the rates of a defense that rejects no client
    name = value.metric
    if name == "detection":
        tpr, fpr = (_aggregate(list(rated[c]), "mean", 2) for c in ("tpr", "fpr"))
        return f"{tpr}/{fpr}"
    if name == "seeds":
        return ",".join(str(s) for s in sorted(runs["seed"]))
    if name == "one_cluster":
        return f"{int(runs['one_cluster'].sum())}/{int(runs['rounds_run'].sum())}"
    if name == "attackers":
        lo, hi = runs["attackers_min"].min(), runs["attackers_max"].max()
        return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo:.0f}-{hi:.0f}"
    agg = _agg_of(value, table_agg)
    vals = [float(x) for x in rated[name]]
    if agg == "list":
        return ", ".join(_number(x, digits) for x in vals)
    if agg in ("min", "max"):
        finite = [(x, i) for i, x in enumerate(vals) if math.isfinite(x)]
        if not finite:
            return "-"
        x, i = (min if agg == "min" else max)(finite)
        label = f" ({key_text(value.label, rated.iloc[i][value.label])})" if value.label else ""
        return _number(x, digits) + label
    text = _aggregate(vals, agg, digits)
    if name == "backdoor" and in_cell:
        return "" if text == "-" else f"({text})"
    return text


def _cell_text(parts: list[str]) -> str:
    out = ""
    for p in parts:
        if not p:
            continue
        out += (" " if p.startswith("(") else " · ") + p if out else p
    return out or "-"


# ----- tables --------------------------------------------------------------------------------------
def _order(values: Iterable[Any], declared: Sequence[Any]) -> list[Any]:
    """Distinct canonical values: numbers ascending, the rest in declaration order (then first seen)."""
    seen = list(dict.fromkeys(canon(v) for v in values))
    if all(isinstance(v, float) or v is None for v in seen):
        return sorted(seen, key=lambda v: (v is None, v if v is not None else 0.0))
    rank = {v: i for i, v in enumerate(dict.fromkeys(canon(d) for d in declared))}
    return sorted(seen, key=lambda v: (rank.get(v, len(rank)), str(v)))


def render_table(spec: TableSpec, runs: pd.DataFrame, expected: pd.DataFrame, rejecting: set[str],
                 path_of: Callable[[str], str], declared: dict[str, list[Any]]) -> str:
    """The Markdown of one declared table: a title, its note, the table and a one-line legend.

    ``expected`` holds the config keys of every cell the study declares (for ``not run`` and
    ``k of n runs``); ``declared`` the order of each key's values in the study file.
    """
    keys = [path_of(k) for k in (*spec.rows, *spec.columns)]
    runs, expected = select(runs, spec, path_of), select(expected, spec, path_of)
    runs = runs.sort_values("seed", kind="stable") if len(runs) else runs

    def group_key(line: pd.Series) -> tuple[Any, ...]:
        return tuple(canon(line.get(k)) for k in keys)

    shown: dict[tuple[Any, ...], Any] = {}  # canonical key -> original value, for display
    groups: dict[tuple[Any, ...], list[int]] = {}
    for frame, target in ((expected, None), (runs, groups)):
        for idx, line in frame.iterrows():
            k = group_key(line)
            for path, c, v in zip(keys, k, (line.get(p) for p in keys)):
                shown.setdefault((path, c), v)
            if target is not None:
                target.setdefault(k, []).append(idx)
            else:
                groups.setdefault(k, [])
    want: dict[tuple[Any, ...], int] = {}
    for _, line in expected.iterrows():
        k = group_key(line)
        want[k] = want.get(k, 0) + 1
    n_rows = len(spec.rows)
    orders = [_order((k[i] for k in groups), declared.get(keys[i], [])) for i in range(len(keys))]

    def sort_key(k: tuple[Any, ...], lo: int, hi: int) -> tuple[int, ...]:
        return tuple(orders[i].index(k[i]) for i in range(lo, hi))

    row_keys = sorted({k[:n_rows] for k in groups}, key=lambda k: sort_key(k, 0, n_rows))
    col_keys = sorted({k[n_rows:] for k in groups}, key=lambda k: sort_key((None,) * n_rows + k, n_rows, len(keys)))
    values = spec.parsed_values()

    def texts(k: tuple[Any, ...], in_cell: bool) -> list[str]:
        """The group's values; in a pivot's cell, joined into one text. A group short of runs says so."""
        members = runs.loc[groups.get(k, [])]
        if members.empty:
            return ["not run"] + [""] * (0 if in_cell else len(values) - 1)
        out = [value_text(v, members, spec.aggregate, rejecting, in_cell) for v in values]
        short = f" ({len(members)} of {want[k]} runs)" if len(members) < want.get(k, 0) else ""
        if in_cell:
            return [_cell_text(out) + short]
        out[0] = (out[0] or "-") + short
        return out

    def label(path_keys: Sequence[str], k: tuple[Any, ...], offset: int) -> list[str]:
        return [key_text(keys[offset + i], shown.get((keys[offset + i], c), c)) for i, c in enumerate(k)]

    row_heads = [KEY_LABELS.get(k, k) for k in spec.rows]
    if spec.columns:
        header = row_heads + [": ".join(label(spec.columns, c, n_rows)) for c in col_keys]
        lines = [label(spec.rows, r, 0) + [texts(r + c, True)[0] if (r + c) in groups else "-"
                                           for c in col_keys] for r in row_keys]
    else:
        header = row_heads + [v.header for v in values]
        lines = [label(spec.rows, r, 0) + [t or "-" for t in texts(r, False)] for r in row_keys]
    parts = [f"### {spec.title}"]
    if spec.note:
        parts.append(spec.note)
    parts.append(markdown_table(header, lines))
    parts.append(legend(values, runs, spec))
    return "\n\n".join(parts)


def _agg_of(value: Value, table_agg: str) -> str:
    metric = METRICS.get(value.metric)
    return (metric.agg if metric else None) or value.agg or (metric.default if metric else None) or table_agg


def legend(values: list[Value], runs: pd.DataFrame, spec: TableSpec) -> str:
    """One line under a table: the seeds, and what its values and symbols mean."""
    seeds = sorted(set(int(s) for s in runs["seed"])) if len(runs) else []
    seed_text = f"Seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds)) or 'none'}"
    parts = [f"{seed_text}, {len(runs)} run{'s' if len(runs) != 1 else ''}"]
    spread = len(seeds) > 1 and any(_agg_of(v, spec.aggregate) == "mean_sd" for v in values)
    if spread:
        parts.append("a ± b: mean ± sd over a group's runs (its seeds)")
    if spec.columns and len(values) > 1:
        parts.append("a cell: " + " · ".join(v.header for v in values if v.metric != "backdoor"))
    for v in values:
        about = METRICS[v.metric].about if v.metric in METRICS else ""
        if about and about not in parts:
            parts.append(about)
    if any(v.metric in METRICS and METRICS[v.metric].rate for v in values):
        parts.append("TPR/FPR: positive = a rejected client, `-` where undefined (a defense that rejects no client, "
                     "or no attacker)")
    return "; ".join(parts) + "."
