"""A `Generator` handed an existing pipeline (training previews, benchmarks) must leave it as it was.

The CUDA speed-up defaults (fused QKV, channels_last) replace modules, attention processors and memory
formats; applied to a pipeline that is being trained, the q/k/v adapters stop receiving gradients. The
tests force those defaults on CPU (the default resolution is made to answer as on CUDA), so they fail
here exactly as the bug does on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from animegen.generate import GenerationRequest, Generator
from animegen.generate.speed import SpeedupConfig, is_qkv_fused
from animegen.models.tiny import build_tiny_pipeline


@pytest.fixture
def cuda_defaults(monkeypatch):
    """Every speed-up left at its default resolves as it would on CUDA (channels_last, fuse_qkv on)."""
    real = SpeedupConfig.resolve
    monkeypatch.setattr(SpeedupConfig, "resolve", lambda self, device: real(self, "cuda"))


def pipe_state(pipe) -> dict:
    """What a speed-up or a sampler could change: modules, attention processors, parameters, the scheduler."""
    state = {"scheduler": id(pipe.scheduler)}
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        state[name, "modules"] = [(n, id(m)) for n, m in module.named_modules()]
        state[name, "params"] = [(n, p.data_ptr(), p.stride()) for n, p in module.named_parameters()]
        if hasattr(module, "attn_processors"):
            state[name, "processors"] = {k: id(v) for k, v in module.attn_processors.items()}
    return state


def test_cuda_defaults_are_forced_here(cuda_defaults):
    """The premise of the other tests: with the patch, asking for the defaults fuses QKV on this CPU."""
    pipe = build_tiny_pipeline("sd15")
    report = Generator(pipe=pipe, speedups=SpeedupConfig()).speedup_report
    assert report.applied["fuse_qkv"] and report.applied["channels_last"] and is_qkv_fused(pipe)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_generator_on_a_lent_pipe_changes_nothing(cuda_defaults):
    pipe = build_tiny_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    before = pipe_state(pipe)
    generator = Generator(pipe=pipe, model_name="tiny")  # no model path needed
    assert generator.speedup_report is None and not is_qkv_fused(pipe)
    assert pipe_state(pipe) == before
    [image] = generator(GenerationRequest(prompt="1girl", steps=1, width=64, height=64, seed=1))
    assert pipe_state(pipe) == before
    assert "Model: tiny" in image.infotext


def test_lent_pipe_names_the_model_from_where_it_was_loaded(tiny_sd15_dir):
    from animegen.models.loading import load_pipeline

    pipe = load_pipeline(tiny_sd15_dir, device="cpu", dtype=torch.float32)
    assert Generator(pipe=pipe).model_name == tiny_sd15_dir.name
    assert Generator(pipe=pipe, model_name="mine").model_name == "mine"
    with pytest.raises(TypeError, match="model"):
        Generator()
