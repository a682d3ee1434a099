"""One CPU thread per training test (the root conftest's `one_torch_thread`)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every training test runs single-threaded."""


@pytest.fixture(scope="session")
def tiny_world_base(tiny_sd15_dir, tmp_path_factory):
    """The tiny SD1.5 after a short full fine-tune on a world of smooth colour fields ("1girl").

    A base model must already denoise its world before a concept can be added to it: a LoRA on the random
    UNet mostly learns generic denoising, and its generations change for every reason but the concept.
    """
    from train_helpers import tiny_config, write_world

    from animegen.train.trainer import train

    # A session fixture is set up before the autouse one-thread fixture, so it pins its own thread count: with
    # torch's default (the cores this process may use) the base differed between a 2-core box and `taskset -c 0`
    # (another float summation order), and what the tests then learned on it differed too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    cfg = tiny_config(tiny_sd15_dir, write_world(root / "data"), root / "run", adapter={"kind": "full"},
                      optimizer={"name": "adamw", "lr": 2e-3, "scheduler": "constant"},
                      train={"max_steps": 120, "batch_size": 8, "device": "cpu"},
                      export={"formats": ["diffusers"], "dtype": "fp32"})
    try:
        return train(cfg).exported["diffusers"]
    finally:
        torch.set_num_threads(threads)
