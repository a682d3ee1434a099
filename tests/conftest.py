"""Shared fixtures: tiny random-weight models written once per test session, and no network."""

from __future__ import annotations

import os

import pytest
import torch

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


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread, restoring the previous count afterwards.

    Tiny models gain nothing from threads, and on a shared 2-core box intra-op threads only spin
    against each other (10-25x slower measured); test folders that run many tiny models opt in.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
