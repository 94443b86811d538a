"""Fixtures of the defense tests (the helpers themselves are in :mod:`.helpers`)."""

from __future__ import annotations

from typing import Callable

import pytest

from skymask_ray.context import DefenseContext
from skymask_ray.defenses import Defense

from .helpers import make_ctx, make_defense


@pytest.fixture
def defense() -> Callable[..., Defense]:
    return make_defense


@pytest.fixture
def ctx() -> Callable[..., DefenseContext]:
    return make_ctx
