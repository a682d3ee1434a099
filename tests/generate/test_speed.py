"""Speed-ups must not change what is generated (beyond stated float tolerances).

Reference for every comparison: the same tiny random-weight pipeline with nothing applied, run
with the same seed — i.e. plain diffusers. Tolerances (pixels in [0, 1]):
* channels_last, fused QKV, SDPA-vs-classic attention: 1e-4 max abs. These change only memory
  layout or the order of float32 sums (rounding ~1e-7 relative per op); 1e-4 is 40x below one
  8-bit level (1/255 = 3.9e-3), so saved PNGs are identical except at rounding boundaries, while
  a real bug (a dropped bias, a wrong head split, an un-merged LoRA) moves pixels by >1e-2.
* VAE tiling: 0.08 max abs / 0.01 mean abs. Tiles are decoded separately (GroupNorm statistics are
  per tile) and blended over a 25% overlap; the result is an approximation by design.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from animegen.generate.speed import (
    SpeedupConfig,
    apply_speedups,
    fused_qkv_in_sync,
    is_qkv_fused,
    sync_fused_qkv,
)
from animegen.models.tiny import build_tiny_pipeline

LAYOUT_TOL = 1e-4
ALL_OFF = dict(channels_last=False, fuse_qkv=False, compile=False, vae_tiling=False, vae_slicing=False,
               cuda_graphs=False)


def _pipe(arch="sd15"):
    pipe = build_tiny_pipeline(arch)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, size=64, steps=3, seed=0, batch=1):
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    with torch.no_grad():
        return pipe("1girl, solo, smile", negative_prompt="lowres", num_inference_steps=steps, height=size,
                    width=size, generator=gens, num_images_per_prompt=batch, output_type="np").images


@pytest.fixture(scope="module")
def sd15_reference():
    return _image(_pipe("sd15"))


def test_all_off_and_cpu_defaults_leave_the_pipeline_bit_identical(sd15_reference):
    pipe = _pipe()
    report = apply_speedups(pipe, **ALL_OFF)
    assert not any(v for k, v in report.applied.items() if k != "sdpa")
    assert np.array_equal(_image(pipe), sd15_reference)

    pipe = _pipe()
    report = apply_speedups(pipe)  # CPU defaults: change nothing
    assert report.config.channels_last is False and report.config.fuse_qkv is False
    assert report.config.compile is False and report.config.vae_tiling is False
    assert np.array_equal(_image(pipe), sd15_reference)


def test_channels_last_same_image(sd15_reference):
    pipe = _pipe()
    report = apply_speedups(pipe, channels_last=True)
    assert report.applied["channels_last"]
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_fused_qkv_same_image(arch, sd15_reference):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    reference = sd15_reference if arch == "sd15" else _image(_pipe(arch))
    pipe = _pipe(arch)
    report = apply_speedups(pipe, fuse_qkv=True)
    assert report.applied["fuse_qkv"] and is_qkv_fused(pipe)
    processors = pipe.unet.attn_processors.values()
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in processors)
    attn1 = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert hasattr(attn1, "to_qkv") and attn1.to_qkv.weight.shape[0] == 3 * attn1.to_q.weight.shape[0]
    assert np.abs(_image(pipe) - reference).max() <= LAYOUT_TOL


def test_classic_attention_matches_sdpa(sd15_reference):
    from diffusers.models.attention_processor import AttnProcessor

    pipe = _pipe()
    report = apply_speedups(pipe, sdpa=False)
    assert report.applied["sdpa"] is False
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL


def _qkv_lora(pipe, rank=4, seed=1):
    """A hand-built LoRA on every self-attention q/k/v (the projections fusion replaces)."""
    from animegen.models.lora import LoraFile, LoraModule

    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_k")):
            out_f, in_f = module.weight.shape
            tensors = {"lora_down.weight": torch.randn(rank, in_f, generator=g) * 0.5,
                       "lora_up.weight": torch.randn(out_f, rank, generator=g) * 0.5}
            modules[f"unet.{name}"] = LoraModule(f"unet.{name}", "lora", tensors, alpha=rank)
    return LoraFile(modules)


def test_lora_merge_on_fused_qkv_needs_and_gets_sync(sd15_reference):
    from animegen.models.lora import apply_loras, remove_loras

    plain = _pipe()
    lora = _qkv_lora(plain)
    apply_loras(plain, [(lora, 1.0)])
    with_lora = _image(plain)
    assert np.abs(with_lora - sd15_reference).max() > 1e-2  # the LoRA visibly changes the image

    fused = _pipe()
    apply_speedups(fused, fuse_qkv=True)
    apply_loras(fused, [(lora, 1.0)])
    assert not fused_qkv_in_sync(fused)  # the hazard: fused copies still hold the base weights
    assert np.abs(_image(fused) - with_lora).max() > 1e-2
    qkv = fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_qkv.weight
    assert sync_fused_qkv(fused) > 0 and fused_qkv_in_sync(fused)
    assert fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_qkv.weight is qkv  # in place
    assert np.abs(_image(fused) - with_lora).max() <= LAYOUT_TOL

    remove_loras(fused)
    sync_fused_qkv(fused)
    assert np.abs(_image(fused) - sd15_reference).max() <= LAYOUT_TOL


def test_sync_is_a_no_op_without_fusion():
    pipe = _pipe()
    assert sync_fused_qkv(pipe) == 0 and fused_qkv_in_sync(pipe)


def test_vae_tiling_close_to_untiled():
    size = 160  # latent 20x20 > the tiny VAE's 8x8 tile: several overlapping tiles
    reference = _image(_pipe(), size=size, steps=2)
    pipe = _pipe()
    calls = []
    original = pipe.vae.tiled_decode
    pipe.vae.tiled_decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    report = apply_speedups(pipe, vae_tiling=True)
    assert report.applied["vae_tiling"] and pipe.vae.use_tiling
    tiled = _image(pipe, size=size, steps=2)
    assert calls, "the tiled decoder was not used at a size larger than one tile"
    diff = np.abs(tiled - reference)
    assert diff.max() <= 0.08 and diff.mean() <= 0.01
    assert diff.max() > 0  # tiling really changed the decode path


def test_vae_slicing_batch_identical_to_unsliced():
    """Slicing decodes a batch one image at a time; per-image ops make that exact."""
    reference = _image(_pipe(), batch=2, steps=2)
    pipe = _pipe()
    apply_speedups(pipe, vae_slicing=True)
    assert pipe.vae.use_slicing
    assert np.abs(_image(pipe, batch=2, steps=2) - reference).max() <= LAYOUT_TOL


def test_generator_with_speedups_matches_plain_generator():
    from animegen.generate import GenerationRequest, Generator

    request = GenerationRequest(prompt="1girl, (smile:1.2)", negative_prompt="lowres", steps=3, seed=7,
                                width=64, height=64, n=2, batch_size=2, sampler="Euler a")
    plain = Generator("tiny", pipe=_pipe("sdxl"))(request)
    pipe = _pipe("sdxl")
    apply_speedups(pipe, channels_last=True, fuse_qkv=True)
    fast = Generator("tiny", pipe=pipe)(request)
    for a, b in zip(plain, fast):
        assert a.seed == b.seed and a.infotext == b.infotext
        assert np.abs(a.array - b.array).max() <= LAYOUT_TOL


def test_config_validation_and_toml(tmp_path):
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        apply_speedups(_pipe(), cuda_graphs=True)
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


def test_compile_is_set_up_with_a_persistent_cache(tmp_path, monkeypatch):
    """Fast check of the compile switch (no forward pass, so nothing is compiled yet)."""
    import torch._inductor.config as inductor_config

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    pipe = _pipe()
    report = apply_speedups(pipe, compile=True, compile_cache_dir=tmp_path / "inductor")
    assert report.applied["compile"] and not report.applied["cuda_graphs"]
    assert pipe.unet._compiled_call_impl is not None  # nn.Module.compile: the module stays in place
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "inductor").resolve())
    assert inductor_config.fx_graph_cache is True
    names = [n for n, _ in pipe.unet.named_parameters()]
    assert "conv_in.weight" in names and not any("_orig_mod" in n for n in names)  # LoRA paths still work


@pytest.mark.slow
def test_compiled_unet_same_image(tmp_path, sd15_reference):
    """Runs inductor on CPU (minutes on a loaded 2-core machine); the fast test above covers setup."""
    pipe = _pipe()
    apply_speedups(pipe, compile=True, compile_cache_dir=tmp_path / "inductor")
    assert np.abs(_image(pipe) - sd15_reference).max() <= LAYOUT_TOL
