"""8-bit AdamW (bitsandbytes, kohya's `--optimizer_type AdamW8bit` / `PagedAdamW8bit`) on any device.

Specification (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"): both Adam moments of a
tensor with at least `min_8bit_size` elements are stored as one byte per element (plus one fp32 absmax per
block and a 256-entry code book), a quarter of fp32 AdamW's state; the update is AdamW's up to the moments'
quantisation error. Reference: the AdamW algorithm written out in `test_optim.py`. The trainer accepts it on
CPU (bitsandbytes runs its optimizers there), resumes it exactly, and runs it in the fused backward pass.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_optim import _adamw_reference
from train_helpers import RED, tiny_config, write_kohya

from animegen.train.config import OptimizerSection
from animegen.train.optim import live_state_bytes, make_optimizer
from animegen.train.trainer import train

CFG = dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)


def _run(name: str, seed: int, steps: int = 20, **extra) :
    gen = torch.Generator().manual_seed(seed)
    p0 = torch.randn(64, 128, generator=gen)
    grads = [torch.randn(64, 128, generator=gen) * 0.1 for _ in range(steps)]
    param = torch.nn.Parameter(p0.clone())
    opt = make_optimizer([{"params": [param], "lr": CFG["lr"]}], OptimizerSection(name=name, **CFG, **extra))
    for g in grads:
        param.grad = g.clone()
        opt.step()
        opt.zero_grad()
    return p0, _adamw_reference(p0, grads, CFG["lr"], CFG["betas"], CFG["eps"], CFG["weight_decay"]).float(), opt, param.detach()


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_both_moments_take_one_byte_per_element(name):
    _, _, opt, param = _run(name, seed=0, steps=1)
    state = next(iter(opt.state.values()))
    moments = [v for v in state.values() if torch.is_tensor(v) and v.shape == param.shape]
    assert len(moments) == 2 and all(m.dtype == torch.uint8 for m in moments)
    # ~2 bytes per element (+ absmax per 256-element block + code books) vs fp32 AdamW's 8
    assert live_state_bytes(opt) < 0.3 * 8 * param.numel()


def test_small_tensors_keep_32_bit_moments_as_bitsandbytes():
    param = torch.nn.Parameter(torch.randn(10, 10))
    opt = make_optimizer([{"params": [param], "lr": 1e-3}], OptimizerSection(name="adamw8bit"))
    param.grad = torch.randn(10, 10)
    opt.step()
    assert next(iter(opt.state.values()))["state1"].dtype == torch.float32


def test_the_update_is_adamw_up_to_quantisation():
    """Over 20 steps on 5 seeds the 8-bit path moves the weights as AdamW does: the distance it travelled
    differs from the reference's by a few percent (block-wise 8-bit moments), and it never points elsewhere."""
    for seed in range(5):
        p0, reference, _, got = _run("adamw8bit", seed)
        moved, wanted = got - p0, reference - p0
        relative = float((moved - wanted).norm() / wanted.norm())
        cosine = float(torch.nn.functional.cosine_similarity(moved.flatten(), wanted.flatten(), dim=0))
        assert relative < 0.05 and cosine > 0.998, (seed, relative, cosine)


@pytest.fixture
def red_data(tmp_path):
    return write_kohya(tmp_path / "data", "red", RED, "zxq, red, square", n=2)


def _opt(fused: bool = False) -> dict:
    return {"optimizer": {"name": "adamw8bit", "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 1,
                          "min_8bit_size": 1, "max_grad_norm": 0.0, "fused_backward": fused}}


def test_8bit_training_resumes_exactly_on_cpu(tmp_path, tiny_sd15_dir, red_data):
    run = dict(train={"max_steps": 4, "batch_size": 1, "device": "cpu"}, **_opt())
    straight = train(tiny_config(tiny_sd15_dir, red_data, tmp_path / "a", **run))
    cfg = tiny_config(tiny_sd15_dir, red_data, tmp_path / "b", checkpoint={"every_steps": 2, "keep_last": 1}, **run)
    assert not train(cfg, stop_at=2).finished
    rest = train(cfg, resume=True)
    assert rest.finished and rest.losses == straight.losses[2:]
    a, b = load_file(straight.exported["kohya"]), load_file(rest.exported["kohya"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_8bit_runs_in_the_fused_backward_pass_with_the_same_weights(tmp_path, tiny_sd15_dir, red_data):
    runs = {f: train(tiny_config(tiny_sd15_dir, red_data, tmp_path / f"run-{f}", **_opt(f),
                                 train={"max_steps": 3, "batch_size": 2, "device": "cpu"})) for f in (False, True)}
    plain, fused = (load_file(runs[f].exported["kohya"]) for f in (False, True))
    assert max(float((plain[k] - fused[k]).abs().max()) for k in plain) <= 1e-6
