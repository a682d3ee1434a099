"""One CPU thread per training test (the root conftest's `one_torch_thread`)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every training test runs single-threaded."""
