"""Fixtures for the prompt tests."""

import pytest


@pytest.fixture(autouse=True)
def _single_torch_thread(one_torch_thread):
    """The tiny encoders run single-threaded (see the root conftest)."""
