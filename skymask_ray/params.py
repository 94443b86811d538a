"""Turn a user's parameter dict into a component's typed params dataclass, with clear errors."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import ConfigError

P = TypeVar("P")


def parse_params(cls: type[P], values: dict[str, Any] | None, owner: str) -> P:
    """Build ``cls(**values)``; unknown keys and wrong types become one-line ConfigErrors."""
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{owner}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or '(none)'}")
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
    return obj
