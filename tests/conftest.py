"""Shared fixtures."""
from __future__ import annotations

import pytest

from mmdisco.testing import make_project


@pytest.fixture
def project(tmp_path):
    """A factory for throw-away copies of the project with params overridden."""
    return lambda overrides: make_project(tmp_path / "proj", overrides)
