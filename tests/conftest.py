"""Shared fixtures."""
from __future__ import annotations

# PyAV must be imported before decord in a process: the other order leaves PyAV unable to
# open the VP8/VP9 encoders that some tests use to make WebM files.
import av  # noqa: F401  (import order matters, see above)
import pytest
import torch

# Tests run small tensors, where one intra-op thread is fastest and immune to the
# oversubscription that makes OpenMP spin when other processes share the two cores.
torch.set_num_threads(1)

from support.project import make_project


@pytest.fixture
def project(tmp_path):
    """A factory for throw-away copies of the project with params overridden."""
    return lambda overrides: make_project(tmp_path / "proj", overrides)
