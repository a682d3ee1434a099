"""`optimizer.fused_backward`: each parameter's optimizer step runs in its gradient hook during the backward
pass (kohya's `--fused_backward_pass`), so gradients of all parameters never exist at once.

Specification: the same run gives the same weights as the ordinary step (AdamW and Adafactor update each
tensor independently, so splitting the optimizer per parameter changes no arithmetic); the gradient bytes
alive at any moment are at most one parameter's; combinations that need every gradient at once (global
clipping, accumulation, fp16 loss scaling) or a global step size (Prodigy) are refused; resume is exact.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RED, tiny_config, write_kohya

import animegen.train.trainer as trainer_mod
from animegen.train.config import ConfigError
from animegen.train.trainer import train

RANDOM_BITS = {
    "adapter": {"kind": "lora", "rank": 4, "alpha": 4.0, "dropout": 0.2},
    "data": {"random_flip": True, "shuffle_tags": True, "keep_tokens": 1, "caption_dropout": 0.3},
    "loss": {"noise_offset": 0.05},
}


def _optimizer(name: str, fused: bool, **extra) -> dict:
    return {"optimizer": {"name": name, "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 2,
                          "max_grad_norm": 0.0, "fused_backward": fused, **extra}}


@pytest.fixture
def red_data(tmp_path):
    return write_kohya(tmp_path / "data", "red", RED, "zxq, red, square, plain", n=3)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_fused_backward_gives_the_same_weights_as_the_ordinary_step(tmp_path, tiny_sd15_dir, red_data, name):
    runs = {}
    for fused in (False, True):
        cfg = tiny_config(tiny_sd15_dir, red_data, tmp_path / f"run-{fused}", **RANDOM_BITS,
                          train={"max_steps": 5, "batch_size": 2, "device": "cpu"}, **_optimizer(name, fused))
        runs[fused] = train(cfg)
    plain, fused = (load_file(runs[f].exported["kohya"]) for f in (False, True))
    assert plain.keys() == fused.keys()
    worst = max(float((plain[k] - fused[k]).abs().max()) for k in plain)
    assert worst <= 1e-6, worst
    assert runs[True].losses == pytest.approx(runs[False].losses, abs=1e-6)
    assert any(float(v.abs().max()) > 0 for k, v in fused.items() if "lora_up" in k)  # something was learned


def _track_gradient_bytes(monkeypatch) -> dict:
    """Patch `Trainer.setup` to watch every trained parameter: when a gradient for one arrives, add its
    bytes to those of every gradient still held (`.grad` set); the largest such sum is the peak."""
    seen = {"peak": 0, "sizes": []}
    real_setup = trainer_mod.Trainer.setup

    def setup(self):
        real_setup(self)
        params = self.params
        seen["sizes"] = [p.numel() * p.element_size() for p in params]

        def arriving(grad):
            held = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            seen["peak"] = max(seen["peak"], held + grad.numel() * grad.element_size())

        for p in params:
            p.register_hook(arriving)

    monkeypatch.setattr(trainer_mod.Trainer, "setup", setup)
    return seen


@pytest.mark.parametrize("fused", [False, True])
def test_gradients_of_all_parameters_never_coexist(tmp_path, tiny_sd15_dir, red_data, monkeypatch, fused):
    seen = _track_gradient_bytes(monkeypatch)
    cfg = tiny_config(tiny_sd15_dir, red_data, tmp_path / "run", train={"max_steps": 2, "batch_size": 1,
                                                                        "device": "cpu"},
                      **_optimizer("adamw", fused))
    train(cfg)
    assert len(seen["sizes"]) > 10
    if fused:
        assert seen["peak"] <= max(seen["sizes"])
    else:  # the measurement sees the ordinary step hold every gradient at once
        assert seen["peak"] == sum(seen["sizes"])


@pytest.mark.parametrize(("extra", "key"), [
    ({"train": {"gradient_accumulation_steps": 2}}, "gradient_accumulation_steps"),
    ({"optimizer": {"max_grad_norm": 1.0}}, "max_grad_norm"),
    ({"optimizer": {"name": "prodigy", "lr": 1.0, "max_grad_norm": 0.0}}, "prodigy"),
    ({"train": {"mixed_precision": "fp16"}}, "fp16"),
])
def test_combinations_that_need_every_gradient_at_once_are_refused(tmp_path, tiny_sd15_dir, extra, key):
    sections = {"optimizer": {"name": "adamw", "max_grad_norm": 0.0, "fused_backward": True,
                              **extra.get("optimizer", {})},
                "train": {"device": "cpu", **extra.get("train", {})}}
    with pytest.raises(ConfigError, match=key) as e:
        tiny_config(tiny_sd15_dir, tmp_path, tmp_path / "run", **sections)
    assert "fused_backward" in str(e.value)


def test_more_than_one_process_is_refused(tmp_path, tiny_sd15_dir, red_data, monkeypatch):
    """DDP averages gradients after the backward pass; a step inside it would use one process's gradient."""
    from accelerate import Accelerator

    cfg = tiny_config(tiny_sd15_dir, red_data, tmp_path / "run", **_optimizer("adamw", True))
    trainer = trainer_mod.Trainer(cfg)
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    with pytest.raises(ConfigError, match="fused_backward.*process"):
        trainer.setup()


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_killed_and_resumed_fused_run_is_bit_identical(tmp_path, tiny_sd15_dir, red_data, name):
    """Also the LR schedule after resume: loading the optimizer state replaces its param-group dicts."""
    kw = dict(train={"max_steps": 6, "batch_size": 2, "device": "cpu"}, **RANDOM_BITS,
              **_optimizer(name, True))
    full = train(tiny_config(tiny_sd15_dir, red_data, tmp_path / "a", **kw))
    resumed = tiny_config(tiny_sd15_dir, red_data, tmp_path / "b", checkpoint={"every_steps": 2}, **kw)
    assert not train(resumed, stop_at=3).finished
    torch.manual_seed(12345)
    rest = train(resumed, resume=True)
    assert rest.step == 6 and rest.losses == full.losses[3:]
    a, b = load_file(full.exported["kohya"]), load_file(rest.exported["kohya"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_fused_backward_setting_is_refused(tmp_path, tiny_sd15_dir, red_data):
    kw = {"train": {"max_steps": 4, "batch_size": 1, "device": "cpu"}, "checkpoint": {"every_steps": 2}}
    train(tiny_config(tiny_sd15_dir, red_data, tmp_path / "run", **kw, **_optimizer("adamw", False)), stop_at=2)
    with pytest.raises(ConfigError, match="fused_backward"):
        train(tiny_config(tiny_sd15_dir, red_data, tmp_path / "run", **kw, **_optimizer("adamw", True)), resume=True)
