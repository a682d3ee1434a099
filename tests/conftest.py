"""Shared fixtures: tiny random-weight models written once per test session, and no network."""

from __future__ import annotations

import os

import pytest

# Tests never reach the Hugging Face hub: everything they load is built offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny SD1.5-architecture diffusers folder (random weights, seed 0)."""
    from animegen.models.tiny import save_tiny_model

    out = tmp_path_factory.mktemp("tiny_sd15") / "model"
    save_tiny_model("sd15", out)
    return out


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny SDXL-architecture diffusers folder (random weights, seed 0)."""
    from animegen.models.tiny import save_tiny_model

    out = tmp_path_factory.mktemp("tiny_sdxl") / "model"
    save_tiny_model("sdxl", out)
    return out
