"""A study: one YAML file naming a grid of experiments, its seeds and the tables it produces.

::

    title: Every attack against FedAvg and SkyMask       # a heading for the results page
    description: what the study asks and how it is set up
    preset: paper-fmnist                                 # under every cell
    base: {rounds: 10}                                   # config overrides under every cell
    grid:                                                # axes: the product of these lists
      malicious_fraction: [0.2]
      defense: [fedavg, skymask]
    cells:                                               # optional explicit points, each under the grid;
      - {attack: lie}                                    # a cell may add axes of its own under `grid`
      - {attack: layer, attack_params: {base: min_max, layers: [last]}}
    seeds: [0, 1, 2]                                     # outermost: every cell of seed 0 runs first
    tables:                                              # what `skymask-ray report STUDY --table` renders
      - title: Final accuracy and detection
        rows: [attack]
        columns: [defense]
        values: [accuracy, backdoor, detection]

Keys are the short names of :data:`GRID_KEYS` or any dotted config path
(``train.local_lr``, ``skymask.select``, ``attack_params.spread``). A cell's
config is, in order: the preset, ``base``, the cell's own values, one point of
the axes, the seed. Every cell is validated before anything runs, and every
cell has its own folder name (:func:`cell_name`). :meth:`Study.narrow` keeps
the cells whose values are among the given ones (``bench --only KEY=V1,V2``),
so a narrowed study is a subset of the file's cells with the same names.

A study's rows are one Parquet table: every round row of its cells (with the
``config`` column) and a ``cell`` column naming the cell. :func:`collect_rows`
gathers them from a study folder; the committed copy of a study in
``benchmarks/studies/`` is ``benchmarks/results/<study>.parquet``
(:attr:`Study.committed_rows`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import yaml

from .config import ExperimentConfig, config_hash, load_yaml_mapping, read_yaml
from .errors import ConfigError
from .experiment import build_config
from .results import config_record, read_parquet
from .run_folder import RunFolder
from .tables import AGGREGATIONS, TableSpec, check_value

GRID_KEYS = {
    "clients": "clients", "malicious_fraction": "malicious_fraction", "malicious": "malicious_fraction",
    "attack": "attack", "defense": "defense", "seed": "seed", "dataset": "data.dataset", "model": "model",
    "bias": "data.bias", "partition": "data.partition", "rounds": "rounds",
}
NAMED_KEYS = {"clients", "malicious_fraction", "attack", "defense", "seed", "data.dataset", "model"}  # in every name
STUDY_KEYS = {"title", "description", "preset", "base", "grid", "cells", "seeds", "concurrency", "tables"}
TABLE_KEYS = {"title", "note", "rows", "columns", "values", "where", "exclude", "aggregate"}
CELL = "cell"  # the column of a study's rows that names each row's cell


def grid_path(key: str) -> str:
    """The dotted config path of a key (a short name or a dotted path); ConfigError if it names nothing."""
    if not isinstance(key, str):
        raise ConfigError(f"study key {key!r} must be a name")
    if key in GRID_KEYS:
        return GRID_KEYS[key]
    head, *rest = key.split(".")
    if head in ("attack_params", "defense_params") and len(rest) <= 1:  # the mapping, or one of its keys
        return key
    obj: Any = ExperimentConfig()
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown study key {key!r}; use one of {', '.join(sorted(GRID_KEYS))}, a dotted config "
                              f"path such as train.local_lr, or attack_params.NAME / defense_params.NAME")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise ConfigError(f"study key {key!r} names a section; use one of its fields, e.g. "
                          f"{key}.{dataclasses.fields(obj)[0].name}")
    return key


def value_at(cfg: ExperimentConfig, path: str) -> Any:
    """The value at a dotted config path (a key below attack/defense_params: None where it is not set)."""
    obj: Any = cfg
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def same_value(a: Any, b: Any) -> bool:
    """Equal as study values: numbers by value (1 and 1.0 alike), lists and tuples alike, the rest by ==."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, nested mappings merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    *heads, last = dotted.split(".")
    for h in heads:
        d = d.setdefault(h, {})
    d[last] = value


def _slug(value: Any) -> str:
    text = format(value, "g") if isinstance(value, float) else json.dumps(value, sort_keys=True) \
        if isinstance(value, (dict, list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+_=]+", "_", text)[:40]


def cell_name(cfg: ExperimentConfig, varied: Iterable[str] = ()) -> str:
    """Folder name of a cell: the standard coordinates, then ``key=value`` for every other key the cell sets.

    A value that does not fit a short readable slug adds a hash of the full
    value, so two cells never share a name.
    """
    name = (f"{cfg.data.dataset}-{cfg.model}-n{cfg.clients}-m{cfg.malicious_fraction:g}-{cfg.attack}-"
            f"{cfg.defense}-s{cfg.seed}")
    for path in varied:
        value = value_at(cfg, path)
        slug = _slug(value)
        full = json.dumps(value, sort_keys=True, default=str)
        if slug != full.strip('"'):
            slug += "-" + hashlib.sha256(full.encode()).hexdigest()[:6]
        name += f"-{path.split('.')[-1]}={slug}"
    return name


@dataclass(frozen=True)
class Cell:
    """One experiment of a study: its validated config and its folder name."""

    config: ExperimentConfig
    name: str


def _axes(where: str, grid: Any) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not all(isinstance(k, str) for k in grid):
        raise ConfigError(f"{where}: 'grid' must map key names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key {key!r} must map to a non-empty list of values")
        if any(v is None for v in values):
            raise ConfigError(f"{where}: grid key {key!r} holds an empty (null) value")
    return grid


@dataclass(frozen=True)
class Study:
    """A study file, checked: see the module docstring. ``config_file`` (the CLI's ``--config``) lies under ``base``."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    cells: tuple[dict[str, Any], ...] = ()
    seeds: tuple[int, ...] | None = None
    preset: str | None = None
    title: str = ""
    description: str = ""
    concurrency: int = 1
    tables: tuple[TableSpec, ...] = ()
    path: Path | None = None
    config_file: str | None = None

    def __post_init__(self) -> None:
        where = f"study {self.name!r}"
        _axes(where, self.grid)
        paths = [grid_path(k) for k in self.grid]
        for i, cell in enumerate(self.cells):
            if not isinstance(cell, dict):
                raise ConfigError(f"{where}: cell {i} must be a mapping of keys to values")
            own = _axes(f"{where}, cell {i}", cell.get("grid", {}))
            keys = [grid_path(k) for k in cell if k != "grid"] + [grid_path(k) for k in own]
            clash = sorted((set(keys) & set(paths)) | {k for k in keys if keys.count(k) > 1})
            if clash:
                raise ConfigError(f"{where}, cell {i}: {', '.join(clash)} given twice (in the cell and the grid)")
        if len(set(paths)) < len(paths):
            raise ConfigError(f"{where}: grid keys {', '.join(self.grid)} name the same config field twice")
        if "seed" in paths:
            raise ConfigError(f"{where}: give the seeds as 'seeds: [...]', not as a grid key")
        if self.seeds is not None and (not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 for s in self.seeds)):
            raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"{where}: 'concurrency' must be an integer >= 1")
        for table in self.tables:
            for key in (*table.rows, *table.columns, *table.where, *table.exclude):
                grid_path(key)
            label = [v.label for v in table.parsed_values() if v.label]
            for key in label:
                grid_path(key)

    @property
    def committed_rows(self) -> Path | None:
        """Where the repository keeps this study's rows: ``<studies folder>/../results/<name>.parquet``."""
        return None if self.path is None else self.path.parent.parent / "results" / f"{self.name}.parquet"

    def with_axes(self, axes: dict[str, list[Any]], seeds: list[int] | None) -> "Study":
        """The study with these axes set (replacing the grid's own) and, when given, these seeds."""
        if not axes and seeds is None:
            return self
        paths = {grid_path(k): k for k in axes}
        grid = {k: v for k, v in self.grid.items() if grid_path(k) not in paths}
        for i, cell in enumerate(self.cells):
            set_by_cell = {grid_path(k) for k in cell if k != "grid"} | {grid_path(k) for k in cell.get("grid", {})}
            both = sorted(set_by_cell & set(paths))
            if both:
                raise ConfigError(f"study {self.name!r}: cell {i} sets {', '.join(both)}; narrow it with "
                                  f"--only {both[0]}=... instead")
        return dataclasses.replace(self, grid={**grid, **axes}, seeds=tuple(seeds) if seeds is not None else self.seeds)

    def expand(self) -> list[Cell]:
        """Every cell, validated, seed by seed; ConfigError (one line) before anything runs."""
        seeds: list[int | None] = list(self.seeds) if self.seeds is not None else [None]
        out: list[Cell] = []
        for seed in seeds:
            for spec in self.cells or ({},):
                point = {grid_path(k): v for k, v in spec.items() if k != "grid"}
                axes = {**spec.get("grid", {}), **self.grid}
                varied = [p for p in (*point, *(grid_path(k) for k in axes)) if p not in NAMED_KEYS]
                for values in itertools.product(*axes.values()):
                    ov: dict[str, Any] = {}
                    for path, v in [*point.items(), *zip((grid_path(k) for k in axes), values)]:
                        _put(ov, path, v)
                    if seed is not None:
                        ov["seed"] = seed
                    cfg = build_config(self.preset, self.config_file, deep_merge(self.base, ov))
                    out.append(Cell(cfg, cell_name(cfg, varied)))
        names = [c.name for c in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"study {self.name!r}: cells {', '.join(dupes[:3])} would share a folder: two cells "
                              "give the same config")
        return out

    def narrow(self, only: dict[str, list[Any]]) -> list[Cell]:
        """The cells whose value at each key of ``only`` is one of its values (each must occur in the study)."""
        cells = self.expand()
        for key, wanted in only.items():
            path = grid_path(key)
            present = _distinct(value_at(c.config, path) for c in cells)
            missing = [w for w in wanted if not any(same_value(w, p) for p in present)]
            if missing:
                raise ConfigError(f"--only {key}: {', '.join(map(str, missing))} not in study {self.name!r} "
                                  f"(its values: {', '.join(map(str, present))})")
            cells = [c for c in cells if any(same_value(value_at(c.config, path), w) for w in wanted)]
        return cells


def parse_only(items: Iterable[str]) -> dict[str, list[Any]]:
    """``KEY=V1,V2`` items (``bench --only``) as {key: [values]}, each value read as YAML; ConfigError if malformed."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        try:
            values = [read_yaml(v) for v in text.split(",") if v.strip()]
        except yaml.YAMLError:
            raise ConfigError(f"--only {item!r}: a value is not valid YAML") from None
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--only {item!r}: expected KEY=V1,V2, e.g. --only seed=1,2")
        out.setdefault(key.strip(), []).extend(values)
    return out


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(same_value(v, o) for o in out):
            out.append(v)
    return out


def _table(where: str, doc: Any) -> TableSpec:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a mapping with title, rows, columns and values")
    unknown = set(map(str, doc)) - TABLE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TABLE_KEYS))}")

    def names(key: str, required: bool = False) -> tuple[str, ...]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (required and not value):
            raise ConfigError(f"{where}: {key!r} must be a {'non-empty ' if required else ''}list of names")
        return tuple(value)

    def filters(key: str) -> dict[str, tuple[Any, ...]]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} must map keys to a value or a list of values")
        return {k: tuple(v) if isinstance(v, list) else (v,) for k, v in value.items()}

    aggregate = doc.get("aggregate", "mean_sd")
    if aggregate not in AGGREGATIONS:
        raise ConfigError(f"{where}: aggregate {aggregate!r} is not one of {', '.join(AGGREGATIONS)}")
    values = names("values", required=True)
    for v in values:
        check_value(v, f"{where}: ")
    title, note = doc.get("title", ""), doc.get("note", "")
    if not isinstance(title, str) or not title or not isinstance(note, str):
        raise ConfigError(f"{where}: 'title' must be a non-empty text and 'note' a text")
    return TableSpec(title=title, note=" ".join(note.split()), rows=names("rows", required=True),
                     columns=names("columns"), values=values, where=filters("where"), exclude=filters("exclude"),
                     aggregate=aggregate)


def load_study(path: str | Path) -> Study:
    """Read and check a study file (every key, cell and table; the cells' configs are checked by :meth:`expand`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study file {str(p)!r} does not exist")
    doc = load_yaml_mapping(p, "study file")
    where = f"study file {str(p)!r}"
    unknown = set(map(str, doc)) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(STUDY_KEYS))}")
    base, cells, tables = doc.get("base") or {}, doc.get("cells") or [], doc.get("tables") or []
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: 'base' must be a mapping of config keys, not a {type(base).__name__}")
    if not isinstance(cells, list):
        raise ConfigError(f"{where}: 'cells' must be a list of mappings")
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: 'tables' must be a list of tables")
    preset = doc.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}: 'preset' must be a name")
    seeds = doc.get("seeds")
    if seeds is not None and not isinstance(seeds, list):
        raise ConfigError(f"{where}: 'seeds' must be a list of integers")
    text = {k: doc.get(k) or "" for k in ("title", "description")}
    if not all(isinstance(v, str) for v in text.values()):
        raise ConfigError(f"{where}: 'title' and 'description' must be text")
    try:
        return Study(name=p.stem, base=base, grid=doc.get("grid") or {}, cells=tuple(cells),
                     seeds=tuple(seeds) if seeds is not None else None, preset=preset,
                     title=" ".join(text["title"].split()), description=" ".join(text["description"].split()),
                     concurrency=doc.get("concurrency", 1),
                     tables=tuple(_table(f"{where}, table {i}", t) for i, t in enumerate(tables)), path=p)
    except ConfigError as exc:
        own = f"study {p.stem!r}"
        text = str(exc)
        raise ConfigError(text.replace(own, where, 1) if text.startswith(own) else f"{where}: {text}") from None


def study_files(paths: Iterable[str | Path]) -> list[Path]:
    """Study files named by ``paths``: files as given, folders as their ``*.yaml`` files (sorted)."""
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.yaml"))
            if not found:
                raise ConfigError(f"no study file (*.yaml) in {str(p)!r}")
            out += found
        else:
            out.append(p)
    return out


def same_experiment(cfg: ExperimentConfig, folder: Path) -> bool | None:
    """Does the folder's config describe the same experiment (all but rounds and where it runs)? None: no config."""
    f = RunFolder(folder).existing_config()
    if f is None:
        return None
    try:
        return config_hash(build_config(file=f)) == config_hash(cfg)
    except ConfigError:
        return False


def cell_rows(folder: Path, name: str) -> pa.Table | None:
    """The round rows of one cell folder with a ``cell`` column (None if it has none).

    Rows from before the ``config`` column was recorded get it from the folder's config file.
    """
    f = RunFolder(folder)
    if not f.rounds.exists():
        return None
    table = read_parquet(f.rounds)
    if "config" not in table.column_names:
        cfg_file = f.existing_config()
        if cfg_file is None:
            raise ConfigError(f"{f.rounds} has no config column and {folder} no config file")
        record = config_record(build_config(file=cfg_file))
        table = table.append_column("config", pa.array([record] * table.num_rows))
    return table.append_column(CELL, pa.array([name] * table.num_rows, pa.string()))


def concat_rows(tables: list[pa.Table]) -> pa.Table:
    """Cells' rows as one table; columns a cell lacks (older versions) are null there, never dropped."""
    if not tables:
        raise ConfigError("no rows: none of the study's cells has a rounds.parquet")
    return pa.concat_tables(tables, promote_options="permissive")


def collect_rows(cells: list[Cell], folder: Path) -> pa.Table:
    """Every row of ``cells`` found in the study folder ``folder`` (cells not run yet are left out).

    A cell folder that holds another experiment (its config's hash differs) is a ConfigError.
    """
    tables = []
    for cell in cells:
        sub = folder / cell.name
        if same_experiment(cell.config, sub) is False:
            raise ConfigError(f"{sub} holds another experiment than the study's cell {cell.name}")
        rows = cell_rows(sub, cell.name)
        if rows is not None:
            tables.append(rows)
    return concat_rows(tables)


def read_rows(source: str | Path, cells: list[Cell]) -> pa.Table:
    """A study's rows from a Parquet file (the committed form) or a study folder of cells."""
    p = Path(source)
    if p.is_dir():
        return collect_rows(cells, p)
    if not p.is_file():
        raise ConfigError(f"rows {str(p)!r} do not exist (a study's Parquet file or its folder of cells)")
    table = read_parquet(p)
    if CELL not in table.column_names or "config" not in table.column_names:
        raise ConfigError(f"{p} is not a study's rows file: it lacks the {CELL!r} or 'config' column")
    return table
