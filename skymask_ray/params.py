"""Typed dataclasses checked once: field values against their annotations, and user parameter dicts.

:func:`check_types` checks every field of a (nested) dataclass against its
type annotation (str, int, float (finite), bool, ``X | None``, ``tuple[int, ...]``,
``dict``, ``Literal``); :func:`parse_params` builds a component's Params from
a user's dict and checks it the same way, so a wrong type is one line naming
the field, wherever it was declared.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

from .errors import ConfigError

P = TypeVar("P")


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
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    if origin is dict or hint is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def check_types(obj: Any, where: str = "") -> None:
    """Every field of the dataclass ``obj`` (recursively) has its annotated type; else one ConfigError."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, f"{where}{f.name}.")
        elif not _type_ok(value, hints[f.name]):
            raise ConfigError(f"{where}{f.name} must be {_describe(hints[f.name])}, got {value!r}")


def parse_params(cls: type[P], values: dict[str, Any] | None, owner: str) -> P:
    """Build ``cls(**values)``; unknown keys and wrong types become one-line ConfigErrors."""
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
    check_types(obj, f"{owner}: ")
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
    return obj
