"""Shared fixtures: tiny random-weight models written once per test session, and no network."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never reach the Hugging Face hub: everything they load is built offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core: intra-op threads would only contend with the other worker
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def save_tiny_upscaler():
    """`save(path, seed=0, **shape)`: a tiny random RRDBNet (x4; `upsamples=1` x2, 3 x8) written to `path` as
    .safetensors, or as a .pth state dict by its suffix; returns the path."""
    from safetensors.torch import save_file

    from animegen.models.upscalers.rrdb import RRDBNet

    def save(path, seed: int = 0, **shape):
        torch.manual_seed(seed)
        state = {k: v.contiguous() for k, v in RRDBNet(blocks=1, features=8, growth=4, **shape).state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, path)
        return path

    return save
