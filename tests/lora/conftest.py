"""Tiny pipelines shared by the LoRA tests, plus hand-written reference helpers."""

from __future__ import annotations

import pytest


def _build(arch):
    import torch

    from animegen.models.tiny import build_tiny_pipeline

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_pipeline(arch, seed=0)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def _sd15():
    return _build("sd15")


@pytest.fixture(scope="session")
def _sdxl():
    return _build("sdxl")


@pytest.fixture
def sd15(_sd15):
    """The session SD1.5 pipeline; any merged LoRA is removed after the test."""
    from animegen.models.lora import remove_loras

    yield _sd15
    remove_loras(_sd15)


@pytest.fixture
def sdxl(_sdxl):
    from animegen.models.lora import remove_loras

    yield _sdxl
    remove_loras(_sdxl)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every LoRA test runs single-threaded (see the root conftest)."""
