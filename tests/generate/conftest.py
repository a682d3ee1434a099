"""Fixtures shared by the A1111-fidelity engine tests: the tiny SD1.5 as the engine and as the reference pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sd15_engine(tiny_sd15_dir):
    """The engine over the tiny SD1.5 on the CPU."""
    from animegen.generate import Generator

    return Generator(tiny_sd15_dir, device="cpu")


@pytest.fixture(scope="module")
def ref_pipe(tiny_sd15_dir):
    """The same model as a plain diffusers pipeline, for `pipeline_reference`."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
