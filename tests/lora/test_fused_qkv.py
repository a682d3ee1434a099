"""Merging into a pipeline with fused QKV projections (diffusers' `fuse_qkv_projections`, which the CUDA
speed-up defaults turn on): `apply_loras` and `remove_loras` alone keep the fused copies in step, so no
caller has to remember a sync call.

Reference: the same tiny SD1.5 UNet, unfused, with the same LoRA. Fusing only regroups the same
matmuls (float-order differences of ~1e-7 relative); a fused copy left stale drops the LoRA's effect,
which this test makes > 1e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lora_testutils import unet_out

from animegen.generate.speed import apply_speedups
from animegen.models.lora import LoraFile, LoraModule, apply_loras, remove_loras

LAYOUT_TOL = 1e-4  # fused vs unfused UNet output, same weights (measured ~1e-6)


def _qkv_lora(unet, rank=4, seed=1) -> LoraFile:
    """A LoRA on exactly the projections fusion copies: self-attention q/k/v, cross-attention k/v."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_k", "attn2.to_v")):
            out_f, in_f = module.weight.shape
            tensors = {"lora_down.weight": torch.randn(rank, in_f, generator=g) * 0.5,
                       "lora_up.weight": torch.randn(out_f, rank, generator=g) * 0.5}
            modules[f"unet.{name}"] = LoraModule(f"unet.{name}", "lora", tensors, alpha=rank)
    return LoraFile(modules)


@pytest.fixture
def plain_and_fused(_sd15):
    plain, fused = copy.deepcopy(_sd15), copy.deepcopy(_sd15)
    report = apply_speedups(fused, fuse_qkv=True)  # forces the CUDA default on CPU
    assert report.applied["fuse_qkv"]
    return plain, fused


def test_apply_and_remove_alone_keep_fused_projections_in_step(plain_and_fused):
    plain, fused = plain_and_fused
    lora = _qkv_lora(plain.unet)
    base = unet_out(plain.unet)
    fused_base = unet_out(fused.unet)
    torch.testing.assert_close(fused_base, base, atol=LAYOUT_TOL, rtol=0)

    apply_loras(plain, [(lora, 1.0)])
    want = unet_out(plain.unet)
    assert (want - base).abs().max() > 1e-2  # the LoRA visibly changes the output

    attn1 = fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    qkv = attn1.to_qkv.weight
    apply_loras(fused, [(lora, 1.0)])
    torch.testing.assert_close(unet_out(fused.unet), want, atol=LAYOUT_TOL, rtol=0)
    assert attn1.to_qkv.weight is qkv  # refreshed in place: compiled graphs / CUDA graphs stay valid

    apply_loras(fused, [(lora, 0.5)])  # a new merge replaces the old one in the fused copies too
    apply_loras(plain, [(lora, 0.5)])
    torch.testing.assert_close(unet_out(fused.unet), unet_out(plain.unet), atol=LAYOUT_TOL, rtol=0)

    remove_loras(fused)
    assert torch.equal(unet_out(fused.unet), fused_base)  # restored bit-exactly, fused copies included
