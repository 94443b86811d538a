"""The ``skymask-ray`` command: run, bench, list, report.

User mistakes (ConfigError, missing data) become one line on stderr and exit
code 2, never a traceback. Every option shows its default in ``-h``: an option
left to the preset / config file shows the value of a default
:class:`~skymask_ray.config.ExperimentConfig` ("30 (from the config)") and sets
no click default, so a ``--config`` file is never overridden by an option not given.

The options of ``run`` and ``bench`` that set config fields are generated from the fields'
declarations in :mod:`skymask_ray.config` (flag, help, bounds, choices, the default shown):
:data:`CONFIG_OPTIONS`; :data:`SET_ONLY` names the fields only ``--set`` and config files reach.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import click
import yaml

from . import __version__
from .config import PRESETS, ExperimentConfig, read_yaml, set_dotted
from .defenses.base import can_reject
from .experiment import build_config
from .errors import ConfigError, UserError
from .params import FLAG, HELP, NONE, bounds_of, leaf_fields
from .progress import progress, round_line, setup_lines
from .storage import atomic_write_text

# -h as well as --help, and every option's default shown, on the group and every command
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
_DEFAULTS = ExperimentConfig()


def config_default(dotted: str) -> Any:
    """The value at ``dotted`` ("train.local_lr") of a default ExperimentConfig: help never drifts from config.py."""
    obj: Any = _DEFAULTS
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)  # a key below attack/defense_params
    return obj


def _yaml_text(value: Any) -> str:
    """A value as it would be written in YAML (and in ``--set``): null, true, 0.5, [1, 28, 28], {}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def from_config(dotted: str, when_none: str | None = None) -> str:
    """``[default: X (from the config)]``: X from a default ExperimentConfig (``when_none`` says what None means)."""
    value = config_default(dotted)
    shown = when_none if value is None and when_none else _yaml_text(value)
    return f"[default: {shown} (from the config)]"


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes and actionable run failures: one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            sys.exit(2)

    return wrapper


def _csv(kind: Callable[[str], Any]) -> Callable[..., list[Any] | None]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None

    return parse


# Config fields without an option of their own: a --config file or --set reaches them (`skymask-ray list` shows
# SkyMask's). Every other field of ExperimentConfig is an option of run and bench, generated from its declaration.
SET_ONLY = frozenset({
    "data.synthetic_train", "data.synthetic_test", "data.synthetic_shape", "data.synthetic_classes",
    "malicious_selection", "attack_params", "defense_params", "train.vmap_chunk",
    "out",  # run's and bench's own --out names the folder
    "skymask.mask_init", "skymask.mask_epochs", "skymask.optimizer", "skymask.mask_lr", "skymask.mask_grad_clip",
    "skymask.mask_batch_size", "skymask.early_stop_step", "skymask.early_stop_delta", "skymask.threshold",
    "skymask.fallback", "skymask.shard_memory_gb", "skymask.kernel", "skymask.select", "skymask.min_silhouette",
    "skymask.gmm_restarts", "skymask.neighbors", "skymask.max_conductance", "skymask.keep_gram",
})


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """The option of one config field: flag, help, default shown and type, all read from the field's declaration.

    It sets no click default: an option not given leaves the field to the preset / config file, and its help
    shows the value of a default ExperimentConfig instead.
    """

    dotted: str
    field: dataclasses.Field  # type: ignore[type-arg]
    hint: Any

    @property
    def flag(self) -> str:
        """``--<name with dashes>``, or the flag the declaration names."""
        return self.field.metadata.get(FLAG) or "--" + self.dotted.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def name(self) -> str:
        """The keyword click passes the value as."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def scalar(self) -> Any:
        """The annotation without its None: int, float, str or a Literal of strings."""
        union = typing.get_origin(self.hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(self.hint) if a is not type(None)] if union else [self.hint]
        if len(args) != 1 or not (args[0] in (int, float, str) or typing.get_origin(args[0]) is typing.Literal):
            raise TypeError(f"config field {self.dotted} ({self.hint}) has no option type; add it to SET_ONLY")
        return args[0]

    def help(self, default: str | None = None) -> str:
        """The declared help, the declared bounds, then ``default`` (else the default config's value)."""
        bounds = bounds_of(self.field)
        text = self.field.metadata[HELP] + (f" Must be {bounds.describe()}." if bounds is not None else "")
        return f"{text}  {default or from_config(self.dotted, self.field.metadata.get(NONE))}"

    def option(self, default: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """One value; a Literal is a choice."""
        scalar = self.scalar
        kind = click.Choice(list(typing.get_args(scalar))) if typing.get_origin(scalar) is typing.Literal else scalar
        return click.option(self.flag, self.name, type=kind, help=self.help(default))

    def list_option(self, default: str | None = None, metavar: str = "LIST",
                    example: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Comma-separated values: a grid axis of bench, one cell each."""
        kind = self.scalar if self.scalar in (int, float) else str
        text = f"Comma-separated for several, one cell each{', e.g. ' + example if example else ''}."
        return click.option(self.flag, self.name, callback=_csv(kind), metavar=metavar,
                            help=self.help(default).replace("  [default:", f" {text}  [default:", 1))


CONFIG_OPTIONS: tuple[ConfigOption, ...] = tuple(
    ConfigOption(dotted, f, hint) for dotted, f, hint in leaf_fields(ExperimentConfig) if dotted not in SET_ONLY)

# --pre: a key below defense_params (the pre-aggregation's, any defense's), not a field of its own
PRE = ("pre", "defense_params.pre")
_pre_option = click.option(
    "--pre", help="Pre-aggregator mixing the updates before any defense (ByzFL's): nnm (nearest-neighbour mixing) or "
                  f"bucketing; its own parameters: --set defense_params.bucket_size=N etc.  "
                  f"{from_config(PRE[1], 'none')}")

# CLI keyword -> dotted config path, for every option above
OVERRIDES = {**{o.name: o.dotted for o in CONFIG_OPTIONS}, PRE[0]: PRE[1]}

BENCH_ROUNDS = 4  # bench without --grid, --config or --rounds: the main job's story, not a study
# the main job: FedAvg and SkyMask side by side under min_max at 20 % (FedAvg stays at chance, SkyMask learns)
BENCH_GRID = {"clients": [500], "malicious_fraction": [0.2], "attack": ["min_max"], "defense": ["fedavg", "skymask"]}
_EXAMPLES = {"clients": "100,500", "malicious_fraction": "0.2,0.8", "attack": "min_max,lie",
             "defense": "fedavg,skymask", "seed": "0,1,2"}

SET_HELP = ("Any config field by its dotted path, the value read as YAML; repeatable, applied after the other "
            "options. E.g. --set skymask.mask_epochs=10 --set attack_params.spread=1 --set train.local_lr=0.1")


def _bench_option(o: ConfigOption) -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """bench's form of a config option: the grid axes and --seed take comma-separated lists (``--seeds`` is a
    hidden alias of --seed) and --rounds says bench's own default."""
    if o.dotted in BENCH_GRID:
        shown = ",".join(_yaml_text(v) for v in BENCH_GRID[o.dotted])
        return [o.list_option(f"[default: {shown} without --grid]", example=_EXAMPLES[o.dotted])]
    if o.dotted == "seed":
        return [o.list_option(metavar="SEEDS", example=_EXAMPLES["seed"]),
                click.option("--seeds", "seeds_alias", callback=_csv(int), hidden=True)]
    if o.dotted == "rounds":
        return [o.option(f"[default: {BENCH_ROUNDS} without --grid or --config, else "
                         f"{_yaml_text(config_default(o.dotted))} (from the config)]")]
    return [o.option()]


def experiment_options(bench: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--config, --preset, an option for every config field not in SET_ONLY (and --pre), then --set.

    All optional: preset/config/defaults fill in. ``bench``: the forms of :func:`_bench_option`.
    """
    opts = [
        click.option("--config", "config_file", type=click.Path(),
                     help="YAML config file: any config field; the options given here override it."),
        click.option("--preset", type=click.Choice(sorted(PRESETS)),
                     help="The paper's settings for a dataset, under the config file."),
    ]
    for o in CONFIG_OPTIONS:
        opts.extend(_bench_option(o) if bench else [o.option()])
        if o.dotted == "defense":
            opts.append(_pre_option)
    opts.append(click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP))

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def overrides_from(kw: dict[str, Any]) -> dict[str, Any]:
    """Nested config overrides from CLI keyword arguments (None = not given), then ``--set`` (``kw["sets"]``)."""
    out: dict[str, Any] = {}
    for key, dotted in OVERRIDES.items():
        set_dotted(out, dotted, kw.get(key))
    return apply_sets(out, kw.get("sets") or ())


def _check_set_key(key: str, item: str) -> None:
    """``key`` names a config field: a dotted path through sections, and any keys below a mapping field
    (attack_params, defense_params), whose keys the attack or defense checks."""
    obj: Any = _DEFAULTS
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(obj, dict):
            return
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i])!r} is a value, not a section; "
                              f"use --set {'.'.join(parts[:i])}=VALUE")
        names = {f.name for f in dataclasses.fields(obj)}
        if part.replace("-", "_") not in names:
            where = ".".join(parts[:i])
            raise ConfigError(f"--set {item!r}: unknown config key {key!r}; known"
                              f"{' in ' + where if where else ''}: {', '.join(sorted(names))}")
        obj = getattr(obj, part.replace("-", "_"))


def apply_sets(overrides: dict[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """Put every ``KEY=VALUE`` of ``--set`` (value parsed as a YAML scalar) into the nested ``overrides``.

    Applied after the named options, so ``--set`` wins. A malformed item, an unknown key or a value that
    is not YAML is one ConfigError line; values are checked with the rest of the config.
    """
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, "
                              f"e.g. --set train.local_lr=0.1")
        _check_set_key(key, item)
        try:
            value = read_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        *heads, last = key.split(".")
        node = overrides
        for head in heads:
            if not isinstance(node.get(head, {}), dict):
                node[head] = {}  # an earlier --set gave the whole section a non-mapping value: this one wins
            node = node.setdefault(head, {})
        node[last] = value  # None (null) too: --set train.grad_clip=null switches the clamp off
    return overrides


_version = click.version_option(__version__, "--version", prog_name="skymask-ray",
                                message="%(prog)s %(version)s")


@click.group(context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@_version
def main(verbose: bool) -> None:
    """skymask-ray: Byzantine-robust federated learning at scale on Ray, around SkyMask.

    `skymask-ray list` shows what can be chosen; `skymask-ray COMMAND -h` shows a command's options
    and their defaults.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command(context_settings=CONTEXT)
@experiment_options()
@click.option("--out", type=click.Path(), default="results/run", help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its checkpoint (or start it if OUT is empty).")
@click.option("--overwrite", is_flag=True, help="Replace the run in OUT (its files are replaced once round 1 is done).")
@_version
@_fail_cleanly
def run(config_file, preset, out, resume, overwrite, **kw) -> None:
    """Run one experiment; writes OUT/rounds.parquet (and OUT/_config.yaml, OUT/_state/ for --resume).

    Settings apply in order: ExperimentConfig's defaults, --preset, --config, the options, then --set.
    """
    from .simulation import run_experiment

    cfg = build_config(preset, config_file, overrides_from(kw))
    with progress(cfg.rounds, "rounds") as bar:

        def on_round(row: dict[str, Any]) -> None:
            bar.write(round_line(row, can_reject(cfg.defense)))
            bar.n = row["round"]
            bar.refresh()

        path = run_experiment(cfg, out, resume=resume, on_round=on_round, overwrite=overwrite,
                              on_setup=setup_lines(bar))
    click.echo(f"wrote {path}")


@main.command(context_settings=CONTEXT)
@experiment_options(bench=True)
@click.option("--grid", "grid_file", type=click.Path(),
              help="Study file (benchmarks/studies/*.yaml: base, grid, cells, seeds, tables); the list options "
                   "above replace its axes.")
@click.option("--only", multiple=True, metavar="KEY=V1,V2",
              help="Run only the study's cells whose KEY is one of these values (repeatable), e.g. "
                   "--only seed=1,2 --only cohort=50.  [default: every cell]")
@click.option("--concurrency", type=int, help="Cells run at once as Ray tasks.  [default: the study's, else 1]")
@click.option("--out", type=click.Path(), default="results/bench", help="Study folder (one subfolder per cell).")
@click.option("--save-rows", type=click.Path(),
              help="Then write every row of the study's cells found in OUT to this one Parquet file (with a "
                   "'cell' column): the form a study is committed in, benchmarks/results/<study>.parquet.  [default: no file]")
@click.option("--overwrite", is_flag=True, help="Replace cells whose folders hold another config's results.")
@_version
@_fail_cleanly
def bench(config_file, preset, grid_file, only, concurrency, out, save_rows, overwrite, **kw) -> None:
    """Run a study: a grid of experiments (clients x malicious x attack x defense x seed), resumable, with a summary.

    Without --grid: 500 clients, 20 % malicious, min_max against fedavg and skymask side by side, 4 rounds.
    --set applies to every cell.
    """
    from .bench import STUDY_SUMMARY, run_grid, summary_table
    from .study import Study, collect_rows, deep_merge, load_study, parse_only

    seeds, alias = kw.pop("seed"), kw.pop("seeds_alias")
    if seeds is not None and alias is not None:
        raise ConfigError("give --seed or --seeds, not both (they are one option)")
    seeds = seeds if seeds is not None else alias
    given_axes = {o.dotted: kw.pop(o.name) for o in CONFIG_OPTIONS if o.dotted in BENCH_GRID}
    study = load_study(grid_file) if grid_file is not None else Study(name="bench")
    sets = kw.pop("sets", ())
    base = apply_sets(deep_merge(study.base, overrides_from(kw)), sets)
    if grid_file is None and kw.get("rounds") is None and config_file is None and "rounds" not in base:
        base["rounds"] = BENCH_ROUNDS
    axes: dict[str, list[Any]] = {}
    for key, given in given_axes.items():
        if given is not None:
            axes[key] = given
        elif grid_file is None:
            axes[key] = BENCH_GRID[key]
    study = dataclasses.replace(study, base=base, preset=preset or study.preset,
                                config_file=config_file).with_axes(axes, seeds)
    cells = study.narrow(parse_only(only))
    rows = run_grid(cells, Path(out), echo=click.echo, concurrency=concurrency or study.concurrency,
                    progress=progress, overwrite=overwrite)
    table = summary_table(rows)
    atomic_write_text(Path(out, STUDY_SUMMARY), table + "\n")
    click.echo(table)
    if save_rows is not None:
        from .results import write_rows

        saved = collect_rows(study.expand(), Path(out))
        write_rows(saved, save_rows)
        click.echo(f"wrote {save_rows} ({len(set(saved.column('cell').to_pylist()))} cells, {saved.num_rows} rows)")


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default="results/report", help="Folder for the plots and summary.md.")
@click.option("--round", "round_", type=int, help="Round of the mask PCA scatter.  [default: the last]")
@click.option("--table", is_flag=True,
              help="INPUTS are study files (or folders of them): print the tables each study declares, from its "
                   "rows, instead of plotting.")
@click.option("--rows", type=click.Path(exists=True),
              help="With --table and one study: its rows, a Parquet file or the study folder of its cells.  "
                   "[default: the committed benchmarks/results/<study>.parquet]")
@click.option("--write", "write_to", type=click.Path(),
              help="With --table: write the results page of every study with committed rows to this file "
                   "(e.g. benchmarks/RESULTS.md).  [default: print each study's tables]")
@_version
def report(inputs, out, round_, table, rows, write_to) -> None:
    """Plots (PNG) and a Markdown summary from result folders or rounds.parquet files; with --table, a study's tables."""
    try:
        if table:
            _report_tables(inputs, rows, write_to)
            return
        if rows is not None or write_to is not None:
            raise ConfigError("--rows and --write go with --table")
        from .report import make_report

        paths = make_report([Path(p) for p in inputs], Path(out), round=round_)
    except (ValueError, FileNotFoundError, UserError) as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    for p in paths:
        click.echo(f"wrote {p}")


RESULTS_COMMAND = "skymask-ray report benchmarks/studies --table --write benchmarks/RESULTS.md"


def _report_tables(inputs: tuple[str, ...], rows: str | None, write_to: str | None) -> None:
    """``report --table``: one study's section on stdout, or the results page of many written to a file."""
    from .pages import results_page, study_section
    from .study import load_study, read_rows, study_files

    studies = [load_study(p) for p in study_files(inputs)]
    if write_to is not None:
        if rows is not None:
            raise ConfigError("--write renders the committed rows of every study; leave out --rows")
        page = Path(write_to)
        atomic_write_text(page, results_page(studies, page, RESULTS_COMMAND))
        click.echo(f"wrote {page}")
        return
    if rows is not None and len(studies) != 1:
        raise ConfigError("--rows goes with one study file")
    for study in studies:
        source = Path(rows) if rows is not None else study.committed_rows
        if source is None or not source.exists():
            if len(studies) > 1:
                click.echo(f"## {study.title or study.name}\n\n(no committed rows)\n")
                continue
            raise ConfigError(f"study {study.name!r} has no committed rows ({source}); pass --rows with its "
                              "Parquet file or study folder")
        click.echo(study_section(study, read_rows(source, study.expand()), f"Rows: `{source}`"))


def describe(obj: Any) -> str:
    """One line: the first sentence of the first paragraph of ``obj``'s docstring, reST markup dropped."""
    doc = (obj.__doc__ or "").strip()
    text = " ".join(doc.split("\n\n")[0].split())
    first = re.split(r"(?<=[a-z0-9)`][.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]
    if ":math:" in first:  # "Krum (Blanchard et al., 2017): :math:`...`": the name, not the formula
        head = first[:first.index(":math:")]
        first = head[:head.index(": ")] if ": " in head else head.rstrip(" ,:")
    first = re.sub(r":\w+:`~?([^`]*)`", r"\1", first).replace("``", "")
    return first if len(first) <= 110 else first[:107].rstrip() + "..."


def _field_default(f: dataclasses.Field) -> Any:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def param_defaults(params_cls: Any) -> list[str]:
    """``name=default`` of every field of a Params dataclass, with its choices or bounds where declared."""
    if params_cls is None or not dataclasses.is_dataclass(params_cls):
        return []
    try:
        hints = typing.get_type_hints(params_cls)
    except Exception:  # an annotation that does not resolve: show the defaults without choices
        hints = {}
    out = []
    for f in dataclasses.fields(params_cls):
        text = f"{f.name}={_yaml_text(_field_default(f))}"
        hint = hints.get(f.name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        choices = [a for h in (typing.get_args(hint) if union else (hint,)) if typing.get_origin(h) is typing.Literal
                   for a in typing.get_args(h)]
        bounds = bounds_of(f)
        if choices:
            text += f" ({'|'.join(map(str, choices))})"
        elif bounds is not None:
            text += f" ({bounds.describe()})"
        out.append(text)
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> list[str]:
    return [item for k, v in d.items()
            for item in (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={_yaml_text(v)}"])]


_NAME_WIDTH = 18


def _echo_entry(name: str, line: str, details: list[str], width: int = 100) -> None:
    """``  name  line``, then the details ("key=default" items, never split) wrapped under the line."""
    lines = [line] if line else []
    for item in details:
        if lines and len(lines[-1]) + 2 + len(item) <= width - _NAME_WIDTH - 3 and (lines[-1] != line or not line):
            lines[-1] += "  " + item
        else:
            lines.append(item)
    for i, text in enumerate(lines or [""]):
        click.echo(f"  {name if i == 0 else '':<{_NAME_WIDTH}} {text}".rstrip())


@main.command(name="list", context_settings=CONTEXT)
@_version
def list_components() -> None:
    """Print the datasets, models, attacks (with their parameters), defenses and presets."""
    from .attacks import ATTACKS
    from .data import DATASETS
    from .defenses import DEFENSES
    from .defenses.pre import PRE_AGGREGATORS, PreParams
    from .models import MODELS

    for title, reg, hint in (("datasets", DATASETS, "--dataset NAME"), ("models", MODELS, "--model NAME")):
        click.echo(f"{title} ({hint}):")
        for name in reg.names():
            _echo_entry(name, describe(reg.get(name)), [])
    click.echo("attacks (--attack NAME; parameters: --set attack_params.KEY=VALUE):")
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        _echo_entry(name, describe(cls), param_defaults(getattr(cls, "Params", None)))
    click.echo("defenses (--defense NAME; parameters: --set defense_params.KEY=VALUE):")
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        details = param_defaults(getattr(cls, "Params", None))
        if name == "skymask":  # its knobs are the config's skymask section
            details = ["settings: --set skymask.KEY=VALUE:"] + param_defaults(type(_DEFAULTS.skymask))
        _echo_entry(name, describe(cls), details)
    pre = [d if not d.startswith("pre=") else f"{d} ({'|'.join(PRE_AGGREGATORS.names())})"
           for d in param_defaults(PreParams)]
    _echo_entry("(any defense)", "a pre-aggregator first: --set defense_params.pre=NAME", pre)
    click.echo("presets (--preset NAME):")
    for name in sorted(PRESETS):
        _echo_entry(name, "", _flat(PRESETS[name]))


def entry() -> None:
    """The ``skymask-ray`` command: :func:`main`, then an immediate exit once its output is flushed.

    Every file a command writes is complete on disk when it returns (atomic,
    fsync'ed writes) and Ray is shut down, so the interpreter's own teardown
    (unloading torch, Ray and their threads, most of a second) is skipped with
    ``os._exit``. An unexpected exception still ends with its traceback.
    """
    try:
        main(standalone_mode=True)
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        click.echo(code, err=True)
        code = 1
    if "ray" in sys.modules:  # a command that left Ray running must not leave its processes behind
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
