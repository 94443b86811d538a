"""Fixtures of the attack tests."""

from __future__ import annotations

import pytest

from .helpers import TinyWorld


@pytest.fixture
def tiny_world() -> TinyWorld:
    return TinyWorld()
