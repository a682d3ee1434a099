"""Core tests: a known umask, and a private cache root, for every test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def umask_022():
    """Run under umask 022 (files 0644), restoring the previous umask afterwards."""
    before = os.umask(0o022)
    yield 0o022
    os.umask(before)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Hash caches and other cache files go to this test's own folder, never the user's."""
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
