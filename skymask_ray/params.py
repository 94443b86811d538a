"""Typed dataclasses checked once: field values against their annotations and declared bounds.

A component declares its parameters as a dataclass ``Params``; the annotation
says the type and the field says the range::

    @dataclass
    class Params:
        z: float | None = bounded(None, gt=0)          # None, or a finite number > 0
        fraction: float = bounded(0.1, gt=0, le=1)     # in (0, 1]
        steps: int = bounded(4, ge=0)                  # an integer >= 0
        anchor: Literal["benign", "mean"] = "benign"   # one of these strings

:func:`check_types` checks every field of a (nested) dataclass against its
type annotation (str, int, float (finite), bool, ``X | None``, ``tuple[int, ...]``,
``list[str]``, ``dict``, ``Literal``) and then against the bounds that
:func:`bounded` declared (``None`` is never bounded); :func:`parse_params`
builds a component's Params from a user's dict and checks it the same way, so
a wrong type or an out-of-range value is one line naming the field, wherever it
was declared. A ``validate()`` method, if the class has one, runs last: it is
only for rules no annotation or bound can state (one field against another).
A subclass that re-declares a field (a new default) must repeat its bounds.

The experiment config declares its fields with :func:`declare`: the same bounds,
plus the help text the command line shows (and, where it differs from
``--<name>``, the option's flag), so a field is declared once; :func:`leaf_fields`
walks such a declaration section by section and :func:`check` is its one check path.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any, Callable, Iterator, TypeVar

from .errors import ConfigError

P = TypeVar("P")
T = TypeVar("T")

BOUNDS = "bounds"  # the dataclass field metadata key :func:`bounded` sets
HELP = "help"  # what the field is (the command line's help text), set by :func:`declare`
NONE = "none"  # what None means for the field, where None is allowed
FLAG = "flag"  # the command-line option of the field, where it is not --<name with dashes>


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Inclusive (``ge``, ``le``) and exclusive (``gt``, ``lt``) limits on a number; None: no limit."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if self.ge is not None and self.gt is not None or self.le is not None and self.lt is not None:
            raise TypeError("give at most one lower (ge/gt) and one upper (le/lt) bound")

    def holds(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``<= 1`` or, with both sides, ``in (0, 1]``."""
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else None
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else None
        if low and high:
            left = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
            right = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
            return f"in {left}, {right}"
        return low or high or "any number"


def bounded(default: T, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> T:
    """A dataclass field with ``default`` whose value (unless None) must satisfy the given bounds.

    ``ge``/``le`` are inclusive, ``gt``/``lt`` exclusive; :func:`check_types` enforces them with one
    ConfigError line ("z must be > 0, got -1"). String choices are ``Literal[...]`` annotations instead.
    """
    bounds = Bounds(ge=ge, gt=gt, le=le, lt=lt)
    return dataclasses.field(default=default, metadata={BOUNDS: bounds})  # type: ignore[return-value]


def declare(default: Any = dataclasses.MISSING, *, help: str, factory: Callable[[], Any] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            none: str | None = None, flag: str | None = None) -> Any:
    """A documented dataclass field: ``default`` (or ``factory`` for a mapping or a section), the ``help``
    text a user reads, bounds as in :func:`bounded` (only those given), what ``None`` means and the
    command-line ``flag`` where it is not ``--<name>``."""
    if not help or not help.strip():
        raise TypeError("declare() needs the field's help text")
    meta: dict[str, Any] = {HELP: help}
    if any(b is not None for b in (ge, gt, le, lt)):
        meta[BOUNDS] = Bounds(ge=ge, gt=gt, le=le, lt=lt)
    if none is not None:
        meta[NONE] = none
    if flag is not None:
        meta[FLAG] = flag
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def leaf_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:  # type: ignore[type-arg]
    """(dotted name, field, annotation) of every field of the dataclass ``cls`` that is not a section
    (a nested dataclass); sections are walked where they are declared."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def bounds_of(f: dataclasses.Field) -> Bounds | None:  # type: ignore[type-arg]
    """The bounds a field declared with :func:`bounded`, if any."""
    return f.metadata.get(BOUNDS)


def _type_ok(value: Any, hint: Any) -> bool:
    """Does ``value`` fit the annotation ``hint`` (str, int, float, bool, X | None, tuple[int, ...], dict)?"""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_type_ok(v, inner) for v in value)
    if origin is list:
        inner = typing.get_args(hint)[0]
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
    if origin in (tuple, list):
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    if origin is dict or hint is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def check_types(obj: Any, where: str = "") -> None:
    """Every field of the dataclass ``obj`` (recursively) has its annotated type and lies within its
    declared :func:`bounded` limits (None is never bounded); else one ConfigError naming the field."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, f"{where}{f.name}.")
            continue
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(f"{where}{f.name} must be {_describe(hints[f.name])}, got {value!r}")
        bounds = bounds_of(f)
        if bounds is not None and value is not None and not bounds.holds(value):
            null = " or null" if _optional(hints[f.name]) else ""
            raise ConfigError(f"{where}{f.name} must be {bounds.describe()}{null}, got {value!r}")


def parse_params(cls: type[P], values: dict[str, Any] | None, owner: str) -> P:
    """Build ``cls(**values)``; unknown keys, wrong types, values out of bounds and a failed
    ``validate()`` (cross-field rules) become one-line ConfigErrors prefixed with ``owner``."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{owner}: parameters must be a mapping, got {values!r}")
    values = dict(values or {})
    if not all(isinstance(k, str) for k in values):
        raise ConfigError(f"{owner}: parameter names must be strings, got {sorted(map(repr, values))}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or '(none)'}")
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None
    check(obj, f"{owner}: ")
    return obj


def check(obj: Any, where: str = "") -> None:
    """The one check path of a declared dataclass: :func:`check_types` (types, bounds, Literal choices),
    then the ``validate()`` of every section (innermost first) and of ``obj`` itself, for the rules that
    relate one field to another. A ValueError from a ``validate()`` becomes one ConfigError line,
    prefixed with ``where`` and the section's dotted path (so its message starts with the field's name)."""
    check_types(obj, where)
    _validate(obj, where)


def _validate(obj: Any, where: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, f"{where}{f.name}.")
    rule = getattr(obj, "validate", None)
    if rule is not None:
        try:
            rule()
        except ValueError as exc:
            raise ConfigError(f"{where}{exc}") from None
