"""Shared fixtures of the project's own tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from scratch for this test, and again afterwards."""
    from specsample import registry

    registry.reset()
    yield registry
    registry.reset()
