"""Fixtures for the evaluation tests: one random-weight FID network and small synthetic image folders."""

from __future__ import annotations

import pytest
from eval_testutils import write_images


@pytest.fixture(scope="session")
def fid_net():
    from animegen.evaluate.inception import build_fid_inception

    return build_fid_inception(None, seed=0, device="cpu")


@pytest.fixture
def image_dirs(tmp_path):
    real = tmp_path / "real"
    fake = tmp_path / "fake"
    write_images(real, 6, seed=1, sizes=((64, 64), (80, 48)))
    write_images(fake, 5, seed=2, sizes=((72, 72),))
    return real, fake
