"""Each step's adapter dropout draws from a generator seeded by (run seed, step, process) alone, so random
draws made elsewhere between steps (a preview, a validation pass, user code) never change the run."""

from __future__ import annotations

import torch
from train_helpers import RED, tiny_config, write_kohya

from animegen.train.trainer import Trainer

DROPOUT = {"kind": "lora", "rank": 4, "alpha": 4.0, "dropout": 0.5}


def _losses(config, disturb: bool) -> list[float]:
    trainer = Trainer(config)
    step = trainer.train_step

    def disturbed(*args, **kwargs):
        if disturb:
            torch.rand(17)  # advances the global CPU generator between steps
        return step(*args, **kwargs)

    trainer.train_step = disturbed
    return trainer.run().losses


def test_dropout_is_a_function_of_the_step_not_of_earlier_global_draws(tmp_path, tiny_sd15_dir):
    data = write_kohya(tmp_path / "data", "red", RED, "zxq, red", n=2)
    config = lambda out: tiny_config(tiny_sd15_dir, data, tmp_path / out, adapter=DROPOUT,  # noqa: E731
                                     train={"max_steps": 3, "batch_size": 2, "device": "cpu"})
    assert _losses(config("a"), disturb=False) == _losses(config("b"), disturb=True)
