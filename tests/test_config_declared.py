"""The experiment config is declared once (#33 item 5): every field's type, bounds and help live in its
declaration, the options of ``run`` and ``bench`` are generated from it, and one check path enforces it."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

import skymask_ray.simulation
from skymask_ray import cli
from skymask_ray.config import ExperimentConfig
from skymask_ray.experiment import build_config
from skymask_ray.params import HELP, NONE, bounds_of, leaf_fields

LEAVES = list(leaf_fields(ExperimentConfig))
DOTTED = [dotted for dotted, _, _ in LEAVES]
# string fields that are not a fixed set of choices: registry names, paths and an address
FREE_STRINGS = {"data.dataset", "data.data_dir", "model", "attack", "defense", "address", "out"}


def _sections(cls: type = ExperimentConfig):
    yield cls
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
            yield from _sections(typing.get_type_hints(cls)[f.name])


def _optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def test_every_field_has_help_and_an_option_or_is_reached_only_by_set():
    for cls in _sections():
        for f in dataclasses.fields(cls):
            assert f.metadata.get(HELP, "").strip(), f"{cls.__name__}.{f.name} has no help text"
    generated = [o.dotted for o in cli.CONFIG_OPTIONS]
    assert set(generated) | cli.SET_ONLY == set(DOTTED), "a config field is neither an option nor in SET_ONLY"
    assert not set(generated) & cli.SET_ONLY
    assert cli.SET_ONLY <= set(DOTTED), f"SET_ONLY names no field: {sorted(cli.SET_ONLY - set(DOTTED))}"
    assert len(generated) > 25


def test_none_is_explained_and_string_choices_are_literals():
    for dotted, f, hint in LEAVES:
        if _optional(hint):
            assert f.metadata.get(NONE), f"{dotted}: say what None means (declare(..., none=...))"
        if hint is str or (_optional(hint) and str in typing.get_args(hint)):
            assert dotted in FREE_STRINGS, f"{dotted}: a string of fixed choices is a Literal[...]"


@pytest.mark.parametrize("command", ["run", "bench"])
def test_options_carry_the_declared_flag_help_type_and_no_click_default(command):
    cmd = cli.main.commands[command]
    ctx = click.Context(cmd, info_name=command, **cmd.context_settings)
    by_flag = {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
    flags = [o.flag for o in cli.CONFIG_OPTIONS]
    assert len(set(flags)) == len(flags)
    own = [p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts if opt in flags]
    assert len(own) == len(flags), "a generated flag collides with another option of the command"
    for o in cli.CONFIG_OPTIONS:
        param = by_flag[o.flag]
        help_text = param.get_help_record(ctx)[1]
        assert help_text.startswith(o.field.metadata[HELP]), (o.flag, help_text)
        bounds = bounds_of(o.field)
        if bounds is not None:
            assert f"Must be {bounds.describe()}." in help_text, (o.flag, help_text)
        assert param.get_default(ctx) in (None, getattr(click.core, "UNSET", None))
        if command == "bench" and (o.dotted in cli.BENCH_GRID or o.dotted == "seed"):
            assert "Comma-separated" in help_text
            continue
        scalar = o.scalar
        if typing.get_origin(scalar) is typing.Literal:
            assert isinstance(param.type, click.Choice) and tuple(param.type.choices) == typing.get_args(scalar)
        else:
            assert param.type.name == {int: "integer", float: "float", str: "text"}[scalar], (o.flag, param.type)


def _just_outside(kind: str, bound: float, integer: bool) -> float:
    if kind in ("gt", "lt"):
        return int(bound) if integer else float(bound)
    if integer:
        return math.ceil(bound) - 1 if kind == "ge" else math.floor(bound) + 1
    return math.nextafter(bound, -math.inf if kind == "ge" else math.inf)


BOUNDED = [(o, kind, getattr(bounds_of(o.field), kind)) for o in cli.CONFIG_OPTIONS if bounds_of(o.field) is not None
           for kind in ("ge", "gt", "le", "lt") if getattr(bounds_of(o.field), kind) is not None]


@pytest.fixture
def no_run(monkeypatch):
    """run_experiment replaced: a config that validates is recorded, nothing runs."""
    seen: dict = {}
    monkeypatch.setattr(skymask_ray.simulation, "run_experiment",
                        lambda cfg, out, **kw: seen.setdefault("cfg", cfg) and Path(out))
    return seen


def test_the_bound_table_covers_int_float_and_optional_fields():
    kinds = {(o.scalar, _optional(o.hint)) for o, _, _ in BOUNDED}
    assert {(int, False), (float, False), (int, True)} <= kinds
    assert {o.dotted for o, _, _ in BOUNDED} >= {"rounds", "dropout", "cohort", "train.local_lr", "data.bias"}


@pytest.mark.parametrize("option, kind, bound", BOUNDED, ids=[f"{o.flag}-{k}" for o, k, _ in BOUNDED])
def test_the_declared_bound_is_what_the_cli_rejects(option, kind, bound, no_run, tmp_path):
    """One value just outside each declared bound of each generated option: one line naming the field and bound."""
    value = _just_outside(kind, bound, option.scalar is int)
    res = CliRunner().invoke(cli.main, ["run", f"{option.flag}={value!r}", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {option.dotted} must be {bounds_of(option.field).describe()}")
    assert "cfg" not in no_run


def test_a_value_on_an_inclusive_bound_passes(no_run, tmp_path):
    res = CliRunner().invoke(cli.main, ["run", "--rounds", "1", "--seed", "0", "--dropout", "0", "--bias", "1",
                                        "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    cfg = no_run["cfg"]
    assert (cfg.rounds, cfg.seed, cfg.dropout, cfg.data.bias) == (1, 0, 0.0, 1.0)


@pytest.mark.parametrize("args, needles", [
    (["--device", "tpu"], ["'tpu' is not one of", "'auto'", "'cpu'", "'cuda'"]),  # a Literal: its choices
    (["--partition", "halves"], ["'halves' is not one of", "'subject'"]),
    (["--rounds", "1.5"], ["'1.5' is not a valid integer"]),  # an int
    (["--local-lr", "fast"], ["'fast' is not a valid float"]),  # a float
])
def test_option_types_and_choices_come_from_the_annotation(args, needles, no_run, tmp_path):
    res = CliRunner().invoke(cli.main, ["run", *args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "cfg" not in no_run
    for needle in needles:
        assert needle in res.output, res.output


@pytest.mark.parametrize("item, message", [
    ("skymask.threshold=1", "error: skymask.threshold must be in (0, 1), got 1"),  # a bound of a --set-only float
    ("skymask.mask_epochs=0", "error: skymask.mask_epochs must be >= 1, got 0"),  # ... int
    ("skymask.select=kmeans", "error: skymask.select must be one of gmm2, bic, silhouette, spectral, got 'kmeans'"),
    ("skymask.neighbors=0", "error: skymask.neighbors must be >= 1 or null, got 0"),  # ... optional int
    ("data.synthetic_shape=[1, 0]", "error: data.synthetic_shape must be 1 to 3 positive integers"),  # a validate()
    ("cohort=101", "error: cohort must be at most clients (100), got 101"),  # cross-field
])
def test_set_only_fields_are_checked_by_the_same_path(item, message, no_run, tmp_path):
    res = CliRunner().invoke(cli.main, ["run", "--set", item, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and res.output.startswith(message), res.output


def test_every_set_only_field_is_reached_by_set():
    default = ExperimentConfig()
    items = []
    for dotted in sorted(cli.SET_ONLY):
        value = default
        for part in dotted.split("."):
            value = getattr(value, part)
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True)
        items.append(f"{dotted}={text.removesuffix(chr(10) + '...' + chr(10)).strip()}")  # YAML 1.1: 1.0e-07
    overrides = cli.apply_sets({}, items)
    reached = {f"{key}.{name}" if key in ("data", "train", "skymask") else key
               for key, value in overrides.items() for name in (value if key in ("data", "train", "skymask") else [key])}
    assert reached == cli.SET_ONLY
    assert build_config(overrides=overrides) == build_config()


def test_bench_axes_take_lists_of_the_fields_type(monkeypatch, tmp_path):
    import skymask_ray.bench

    seen = []
    monkeypatch.setattr(skymask_ray.bench, "run_grid", lambda cells, out, **kw: seen.extend(cells) or [])
    monkeypatch.setattr(skymask_ray.bench, "summary_table", lambda rows: "table")
    res = CliRunner().invoke(cli.main, ["bench", "--clients", "10,20", "--malicious", "0.1", "--attack", "lie",
                                        "--defense", "fedavg", "--dataset", "synthetic", "--model", "mlp",
                                        "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert [(c.config.clients, c.config.malicious_fraction, c.config.attack) for c in seen] == \
        [(10, 0.1, "lie"), (20, 0.1, "lie")]
    res = CliRunner().invoke(cli.main, ["bench", "--clients", "10,x", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "comma-separated list" in res.output
