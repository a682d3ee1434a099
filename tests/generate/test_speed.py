"""Speed-ups must not change what is generated (beyond stated float tolerances).

Reference for every comparison: the same tiny random-weight pipeline with nothing applied, run
with the same seed — i.e. plain diffusers. Tolerances (pixels in [0, 1]):
* channels_last, fused QKV, SDPA-vs-classic attention, VAE slicing: 1e-3 max abs. These change only
  memory layout, kernel choice or the order of float32 sums (~1e-7 relative per op); random weights
  amplify that through the denoising steps and the VAE to a few 1e-4 (measured up to 3.2e-4 for
  channels_last). 1e-3 is a quarter of one 8-bit level (1/255 = 3.9e-3), while a real bug (a dropped
  bias, a wrong head split, an un-synced LoRA merge) moves pixels by more than 1e-2. (LoRA merges on
  a fused pipe are specified with the LoRA code: tests/lora/test_fused_qkv.py.)
* VAE tiling: bit-identical up to one tile; above it an approximation by design (see its test).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from animegen.generate.speed import SpeedupConfig, apply_speedups, is_qkv_fused
from animegen.models.tiny import build_tiny_pipeline

LAYOUT_TOL = 1e-3
ALL_OFF = {"channels_last": False, "fuse_qkv": False, "compile": False, "vae_tiling": False,
           "vae_slicing": False, "cuda_graphs": False}


@pytest.fixture(scope="module")
def base_pipes():
    pipes = {}
    for arch in ("sd15", "sdxl"):
        pipes[arch] = build_tiny_pipeline(arch)
        pipes[arch].set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture
def fresh(base_pipes):
    """A private copy of the tiny pipeline (speed-ups change modules in place)."""
    return lambda arch="sd15": copy.deepcopy(base_pipes[arch])


def _image(pipe, size=64, steps=2, seed=0, batch=1):
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    with torch.no_grad():
        return pipe("1girl, solo, smile", negative_prompt="lowres", num_inference_steps=steps, height=size,
                    width=size, generator=gens, num_images_per_prompt=batch, output_type="np").images


@pytest.fixture(scope="module")
def sd15_reference(base_pipes):
    return _image(copy.deepcopy(base_pipes["sd15"]))


def test_cpu_defaults_and_all_off_leave_the_pipeline_bit_identical(fresh, sd15_reference):
    pipe = fresh()
    report = apply_speedups(pipe)  # CPU defaults: change nothing
    assert report.config.channels_last is False and report.config.fuse_qkv is False
    assert report.config.compile is False and report.config.vae_tiling is False
    report = apply_speedups(pipe, **ALL_OFF)
    assert not any(v for k, v in report.applied.items() if k != "sdpa")
    assert np.array_equal(_image(pipe), sd15_reference)


def test_channels_last_same_image(fresh, sd15_reference):
    pipe = fresh()
    report = apply_speedups(pipe, channels_last=True)
    assert report.applied["channels_last"]
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL


def test_fused_qkv_same_image(fresh, sd15_reference):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    pipe = fresh()
    report = apply_speedups(pipe, fuse_qkv=True)
    assert report.applied["fuse_qkv"] and is_qkv_fused(pipe)
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    attn1 = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attn1.to_qkv.weight.shape[0] == 3 * attn1.to_q.weight.shape[0]
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL


def test_classic_attention_matches_sdpa(fresh, sd15_reference):
    from diffusers.models.attention_processor import AttnProcessor

    pipe = fresh()
    report = apply_speedups(pipe, sdpa=False)
    assert report.applied["sdpa"] is False
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL


def _decode(vae, latents):
    with torch.no_grad():
        return (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1).numpy()


def test_vae_tiling_only_changes_images_larger_than_a_tile(fresh):
    """Tiling is exact up to one tile and an approximation above it.

    The tiny VAE's tile is 64 px (8 latents) and its random weights make per-tile GroupNorm
    statistics differ a lot, so the large-image bound is loose (mean abs ≤ 0.1, correlation ≥ 0.8
    with the untiled decode; measured ~0.07 / ~0.86 at 160 px); real VAEs tile at 512/1024 px, where diffusers
    reports near-seamless output — that is not verifiable here without real weights.
    """
    plain = fresh().vae
    pipe = fresh()
    report = apply_speedups(pipe, vae_tiling=True)
    assert report.applied["vae_tiling"] and pipe.vae.use_tiling
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 12, 12, generator=g)
    assert np.array_equal(_decode(pipe.vae, small), _decode(plain, small))

    calls = []
    original = pipe.vae.tiled_decode
    pipe.vae.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    tiled, untiled = _decode(pipe.vae, large), _decode(plain, large)
    assert calls and tiled.shape == untiled.shape == (1, 3, 96, 96)
    assert 0 < np.abs(tiled - untiled).mean() <= 0.1
    assert np.corrcoef(tiled.ravel(), untiled.ravel())[0, 1] >= 0.8


def test_vae_slicing_decodes_a_batch_like_one_at_a_time(fresh):
    plain = fresh().vae
    pipe = fresh()
    apply_speedups(pipe, vae_slicing=True)
    assert pipe.vae.use_slicing
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert np.abs(_decode(pipe.vae, latents) - _decode(plain, latents)).max() <= LAYOUT_TOL


def test_generator_with_speedups_matches_plain_generator(fresh):
    from animegen.generate import GenerationRequest, Generator

    request = GenerationRequest(prompt="1girl, (smile:1.2)", negative_prompt="lowres", steps=2, seed=7,
                                width=64, height=64, n=2, batch_size=2, sampler="Euler a")
    plain = Generator("tiny", pipe=fresh("sdxl"))(request)
    pipe = fresh("sdxl")
    apply_speedups(pipe, channels_last=True, fuse_qkv=True)
    fast = Generator("tiny", pipe=pipe)(request)
    for a, b in zip(plain, fast):
        assert a.seed == b.seed and a.infotext == b.infotext
        assert np.abs(a.array - b.array).max() <= LAYOUT_TOL


def test_config_validation_and_toml(fresh, tmp_path):
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        apply_speedups(fresh(), cuda_graphs=True)
    with pytest.raises(ValueError, match="fuse_qkv .* sdpa"):
        SpeedupConfig(fuse_qkv=True, sdpa=False).resolve("cpu")
    with pytest.raises(ValueError, match="compile_mode 'fast'"):
        SpeedupConfig(compile=True, compile_mode="fast").resolve("cpu")
    with pytest.raises(ValueError, match="unknown speed-up option.*channel_last.*valid: .*channels_last"):
        SpeedupConfig.from_mapping({"channel_last": True})
    cuda = SpeedupConfig().resolve("cuda")
    assert cuda.channels_last and cuda.fuse_qkv and not cuda.compile and not cuda.vae_tiling
    graphs = SpeedupConfig(cuda_graphs=True).resolve("cuda")
    assert graphs.compile and graphs.compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="does not capture CUDA graphs"):
        SpeedupConfig(cuda_graphs=True, compile_mode="default").resolve("cuda")
    config_file = tmp_path / "speed.toml"
    config_file.write_text("[speed]\nchannels_last = true\ncompile_mode = \"max-autotune\"\n")
    loaded = SpeedupConfig.from_toml(config_file)
    assert loaded.channels_last is True and loaded.compile_mode == "max-autotune" and loaded.fuse_qkv is None


def test_compile_is_set_up_with_a_persistent_cache(fresh, tmp_path, monkeypatch):
    """Fast check of the compile switch (no forward pass, so nothing is compiled yet)."""
    import torch._inductor.config as inductor_config

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    pipe = fresh()
    report = apply_speedups(pipe, compile=True, compile_cache_dir=tmp_path / "inductor")
    assert report.applied["compile"] and not report.applied["cuda_graphs"]
    assert pipe.unet._compiled_call_impl is not None  # nn.Module.compile: the module stays in place
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "inductor").resolve())
    assert inductor_config.fx_graph_cache is True
    names = [n for n, _ in pipe.unet.named_parameters()]
    assert "conv_in.weight" in names and not any("_orig_mod" in n for n in names)  # LoRA paths still work


@pytest.mark.slow
def test_compiled_unet_same_image(fresh, tmp_path, sd15_reference):
    """Runs inductor on CPU (minutes on a loaded 2-core machine); the fast test above covers setup."""
    pipe = fresh()
    apply_speedups(pipe, compile=True, compile_cache_dir=tmp_path / "inductor")
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL
