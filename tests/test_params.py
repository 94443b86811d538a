"""Declared parameters (skymask_ray.params): types, bounds and Literal choices checked in one place.

The table tests iterate every registered attack and defense (and the pre-aggregation keys) and
every field's declared bounds, so a new component or a new bounded field is covered as it is added.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from skymask_ray.attacks import ATTACKS
from skymask_ray.config import ExperimentConfig
from skymask_ray.defenses import DEFENSES, build_defense
from skymask_ray.defenses.pre import PreParams
from skymask_ray.errors import ConfigError
from skymask_ray.params import FLAG, HELP, NONE, Bounds, bounded, bounds_of, check, declare, leaf_fields, parse_params


@dataclass
class Toy:
    z: float | None = bounded(None, gt=0)
    fraction: float = bounded(0.1, gt=0, le=1)
    steps: int = bounded(4, ge=0)
    top: float = bounded(0.5, lt=1)
    anchor: Literal["benign", "mean"] = "benign"
    free: float = -3.0


def _error(values: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(Toy, values, "attack 'toy'")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("values,message", [
    ({"z": -1}, "attack 'toy': z must be > 0 or null, got -1"),
    ({"z": 0}, "attack 'toy': z must be > 0 or null, got 0"),
    ({"fraction": 0}, "attack 'toy': fraction must be in (0, 1], got 0"),
    ({"fraction": 1.5}, "attack 'toy': fraction must be in (0, 1], got 1.5"),
    ({"steps": -1}, "attack 'toy': steps must be >= 0, got -1"),
    ({"top": 1}, "attack 'toy': top must be < 1, got 1"),
    ({"anchor": "median"}, "attack 'toy': anchor must be one of benign, mean, got 'median'"),
    ({"steps": 1.5}, "attack 'toy': steps must be an integer, got 1.5"),  # the type is checked before the bound
    ({"fraction": float("nan")}, "attack 'toy': fraction must be a finite number, got nan"),
])
def test_bounds_and_choices_are_one_line_errors_naming_field_bound_and_value(values, message):
    assert _error(values) == message


def test_values_on_or_inside_the_bounds_and_null_pass():
    p = parse_params(Toy, {"z": None, "fraction": 1, "steps": 0, "top": -5.0, "anchor": "mean", "free": -1e9}, "t")
    assert (p.z, p.fraction, p.steps, p.top, p.anchor) == (None, 1, 0, -5.0, "mean")
    assert parse_params(Toy, {"z": 1e-300}, "t").z == 1e-300


def test_bounded_declares_metadata_and_refuses_two_bounds_on_one_side():
    (z,) = [f for f in dataclasses.fields(Toy) if f.name == "z"]
    assert bounds_of(z) == Bounds(gt=0)
    assert Toy().fraction == 0.1
    with pytest.raises(TypeError):
        bounded(1.0, ge=0, gt=0)
    with pytest.raises(TypeError):
        bounded(1.0, le=1, lt=1)


# ---- every registered component -------------------------------------------------------------------

COMPONENTS = (
    [(f"attack {n!r}", ATTACKS.get(n).Params) for n in ATTACKS.names()]
    + [(f"defense {n!r}", DEFENSES.get(n).Params) for n in DEFENSES.names()]
    + [("pre-aggregation", PreParams)]
)


def _bounded_fields() -> list[tuple[str, type, str, str, float]]:
    """(owner, Params, field, bound kind, bound value) for every declared bound."""
    rows = []
    for owner, cls in COMPONENTS:
        for f in dataclasses.fields(cls):
            b = bounds_of(f)
            if b is None:
                continue
            for kind in ("ge", "gt", "le", "lt"):
                if getattr(b, kind) is not None:
                    rows.append((owner, cls, f.name, kind, getattr(b, kind)))
    return rows


BOUNDED = _bounded_fields()


def _integer(cls: type, name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) or (hint,)
    return int in args and float not in args


def _just_outside(kind: str, bound: float, integer: bool) -> float:
    """The nearest value of the field's type that breaks ``kind bound``."""
    if kind in ("gt", "lt"):
        return int(bound) if integer and bound == int(bound) else bound
    if integer:
        return math.ceil(bound) - 1 if kind == "ge" else math.floor(bound) + 1
    return math.nextafter(bound, -math.inf if kind == "ge" else math.inf)


def test_every_component_declares_some_bounds():
    assert len(BOUNDED) > 40  # guards the table below against an empty parametrisation


@pytest.mark.parametrize("owner,cls", COMPONENTS, ids=[o for o, _ in COMPONENTS])
def test_defaults_build(owner, cls):
    parse_params(cls, {}, owner)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_builds_with_its_defaults(name):
    ATTACKS.get(name)(None, ExperimentConfig(attack=name))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_builds_with_its_defaults(name):
    build_defense(ExperimentConfig(defense=name))


@pytest.mark.parametrize("owner,cls,name,kind,bound", BOUNDED,
                         ids=[f"{o}.{n}.{k}" for o, _, n, k, _ in BOUNDED])
def test_every_declared_bound_rejects_a_value_just_outside(owner, cls, name, kind, bound):
    value = _just_outside(kind, bound, _integer(cls, name))
    with pytest.raises(ConfigError) as info:
        parse_params(cls, {name: value}, owner)
    message = str(info.value)
    assert message.startswith(f"{owner}: {name} must be ") and message.endswith(f"got {value!r}")
    assert "\n" not in message


@pytest.mark.parametrize("owner,cls", COMPONENTS, ids=[o for o, _ in COMPONENTS])
def test_a_redeclared_field_keeps_its_parents_bounds(owner, cls):
    """A subclass that gives a field a new default (DBA's target) must not drop the parent's bound."""
    own = {f.name: f for f in dataclasses.fields(cls)}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            for f in dataclasses.fields(base):
                if bounds_of(f) is not None:
                    assert bounds_of(own[f.name]) == bounds_of(f), f"{cls.__name__}.{f.name} lost {base.__name__}'s bound"


@pytest.mark.parametrize("owner,cls", COMPONENTS, ids=[o for o, _ in COMPONENTS])
def test_a_remaining_validate_states_its_rule(owner, cls):
    """validate() is kept only for what no annotation or bound states; its docstring says which rule."""
    check = cls.__dict__.get("validate")
    if check is not None:
        assert check.__doc__ and check.__doc__.strip()


# ---- declare, leaf_fields and check: the experiment config's declarations ----------------------------


@dataclass
class Inner:
    low: int = declare(1, ge=0, help="A lower end.")
    high: int = declare(2, help="An upper end.", none="unused")

    def validate(self) -> None:
        """Cross-field: low <= high."""
        if self.low > self.high:
            raise ValueError(f"low must be <= high ({self.high}), got {self.low}")


@dataclass
class Outer:
    inner: Inner = declare(factory=Inner, help="A section.")
    mode: Literal["a", "b"] = declare("a", help="A choice.", flag="--the-mode")
    calls: list[str] = dataclasses.field(default_factory=list, compare=False)

    def validate(self) -> None:
        """Records that it ran, after its section's."""
        self.calls.append("outer")


def test_declare_keeps_help_bounds_none_and_flag_in_the_field():
    low, high = dataclasses.fields(Inner)
    assert (low.metadata[HELP], bounds_of(low), low.metadata.get(NONE)) == ("A lower end.", Bounds(ge=0), None)
    assert (bounds_of(high), high.metadata[NONE]) == (None, "unused")  # no bounds declared: none stored
    assert dataclasses.fields(Outer)[1].metadata[FLAG] == "--the-mode"
    assert Outer().inner == Inner() and Outer().inner is not Outer().inner
    with pytest.raises(TypeError):
        declare(1, help=" ")


def test_leaf_fields_walk_sections_in_declaration_order():
    assert [(d, h) for d, _, h in leaf_fields(Outer)] == [
        ("inner.low", int), ("inner.high", int), ("mode", Literal["a", "b"]), ("calls", list[str])]


@pytest.mark.parametrize("obj, message", [
    (Outer(inner=Inner(low=-1)), "inner.low must be >= 0, got -1"),  # a bound, named by its dotted path
    (Outer(mode="c"), "mode must be one of a, b, got 'c'"),
    (Outer(inner=Inner(low=3)), "inner.low must be <= high (2), got 3"),  # a section's validate(), prefixed
])
def test_check_is_types_and_bounds_then_validate_with_the_sections_path(obj, message):
    with pytest.raises(ConfigError) as info:
        check(obj)
    assert str(info.value) == message
    assert obj.calls == []  # the outer rule never ran on a bad section


def test_check_runs_the_sections_validate_before_the_outer_one():
    obj = Outer()
    check(obj, "cfg: ")
    assert obj.calls == ["outer"]
