"""Merge semantics: linear multipliers, exact restore, no stacking, loud errors, diffusers parity."""

from __future__ import annotations

import copy

import pytest
import torch
from lora_testutils import te_out, unet_out
from safetensors.torch import save_file

from animegen.models.lora import (
    LoraFile,
    LoraFormatError,
    LoraModule,
    LoraTargetError,
    apply_loras,
    read_lora,
    remove_loras,
    write_lora,
)

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.1.resnets.0.conv1"


def _lora(seed: int, alpha: float | None = 2.0, targets=(Q,), te=False) -> LoraFile:
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for path in targets:
        if path == CONV:
            t = {"lora_down.weight": torch.randn(4, 32, 3, 3, generator=g) * 0.1,
                 "lora_up.weight": torch.randn(32, 4, 1, 1, generator=g) * 0.1}
        else:
            t = {"lora_down.weight": torch.randn(4, 32, generator=g) * 0.1,
                 "lora_up.weight": torch.randn(32, 4, generator=g) * 0.1}
        mods[f"unet.{path}"] = LoraModule(f"unet.{path}", "lora", t, alpha)
    if te:
        t = {"lora_down.weight": torch.randn(4, 64, generator=g) * 0.1,
             "lora_up.weight": torch.randn(64, 4, generator=g) * 0.1}
        # (diffusers' own text-encoder LoRA loader only maps attention projections)
        target = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
        mods[target] = LoraModule(target, "lora", t, alpha)
    return LoraFile(mods)


def _weights(pipe):
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}


def test_multiplier_is_linear_and_zero_is_exact_base(sd15):
    lf = _lora(1, te=True, targets=(Q, CONV))
    base = _weights(sd15)
    base_out = unet_out(sd15.unet)
    apply_loras(sd15, [(lf, 1.0)])
    full = _weights(sd15)
    apply_loras(sd15, [(lf, 0.5)])
    half = _weights(sd15)
    changed = [k for k in base if not torch.equal(base[k], full[k])]
    assert sorted(changed) == sorted([f"unet.{Q}.weight", f"unet.{CONV}.weight",
                                      "text_encoder.encoder.layers.0.self_attn.q_proj.weight"])
    for k in changed:
        torch.testing.assert_close(half[k] - base[k], 0.5 * (full[k] - base[k]), atol=1e-6, rtol=1e-4)
    apply_loras(sd15, [(lf, 0.0)])
    assert all(torch.equal(v, base[k]) for k, v in _weights(sd15).items())
    assert torch.equal(unet_out(sd15.unet), base_out)


def test_remove_restores_bit_exactly_and_apply_does_not_stack(sd15):
    a, b = _lora(1), _lora(2, targets=(Q, CONV))
    base = _weights(sd15)
    apply_loras(sd15, [(a, 0.7)])
    once = _weights(sd15)
    apply_loras(sd15, [(a, 0.7)])  # same set again: identical, not doubled
    assert all(torch.equal(v, once[k]) for k, v in _weights(sd15).items())
    apply_loras(sd15, [(b, 1.0)])  # a new set replaces the old one
    only_b = _weights(sd15)
    remove_loras(sd15)
    apply_loras(sd15, [(b, 1.0)])
    assert all(torch.equal(v, only_b[k]) for k, v in _weights(sd15).items())
    assert remove_loras(sd15) > 0
    assert all(torch.equal(v, base[k]) for k, v in _weights(sd15).items())
    assert remove_loras(sd15) == 0


def test_two_loras_on_one_layer_add_up(sd15):
    a, b = _lora(1), _lora(2, alpha=None)
    w = sd15.unet.get_submodule(Q).weight.detach().clone()
    da = a.modules[f"unet.{Q}"].tensors
    db = b.modules[f"unet.{Q}"].tensors
    expected = (w + 0.6 * (da["lora_up.weight"] @ da["lora_down.weight"]) * 2.0 / 4
                - 0.3 * (db["lora_up.weight"] @ db["lora_down.weight"]))
    apply_loras(sd15, [(a, 0.6), (b, -0.3)])
    torch.testing.assert_close(sd15.unet.get_submodule(Q).weight, expected, atol=1e-6, rtol=1e-5)


def test_modules_missing_from_the_model_are_named(sd15, sdxl, tmp_path):
    bad = {"unet.down_blocks.7.attentions.0.proj_in", "text_encoder_2.text_model.encoder.layers.0.mlp.fc1"}
    lf = _lora(1)
    for target in bad:
        lf.modules[target] = LoraModule(target, "lora", dict(lf.modules[f"unet.{Q}"].tensors), None)
    base = _weights(sd15)
    with pytest.raises(LoraTargetError) as err:
        apply_loras(sd15, [(lf, 1.0)])
    for target in bad:
        assert target in str(err.value)
    assert all(torch.equal(v, base[k]) for k, v in _weights(sd15).items())  # nothing half-applied


def test_unknown_keys_in_a_file_are_named(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.zeros(2, 32, 3, 3),
               "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(32, 2, 1, 1),
               "lora_unet_down_blocks_0_resnets_0_conv1.mystery": torch.zeros(1),
               "model.diffusion_model.something": torch.zeros(1)}, str(path))
    with pytest.raises(LoraFormatError) as err:
        read_lora(path)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.mystery" in str(err.value)
    assert "model.diffusion_model.something" in str(err.value)


def test_diffusers_load_lora_weights_matches_our_apply(sd15, tmp_path):
    """Our diffusers-layout file, loaded by diffusers itself, gives the same UNet output."""
    lf = _lora(3, alpha=1.0, targets=(Q, CONV), te=True)
    lf.modules[f"unet.{Q}"] = LoraModule(f"unet.{Q}", "lora", lf.modules[f"unet.{Q}"].tensors, 3.0)
    # (per-module alphas must survive: they travel in the lora_adapter_metadata header)
    te_base = te_out(sd15.text_encoder)
    path = write_lora(lf, tmp_path / "d.safetensors", format="diffusers")
    base = unet_out(sd15.unet)
    theirs = copy.deepcopy(sd15)
    theirs.load_lora_weights(str(path))
    apply_loras(sd15, [(read_lora(path), 1.0)])
    ours = unet_out(sd15.unet)
    assert (ours - base).abs().max() > 1e-4
    torch.testing.assert_close(unet_out(theirs.unet), ours, atol=2e-5, rtol=1e-4)
    te_ours = te_out(sd15.text_encoder)
    assert (te_ours - te_base).abs().max() > 1e-4
    torch.testing.assert_close(te_out(theirs.text_encoder), te_ours, atol=2e-5, rtol=1e-4)


def test_diffusers_kohya_sdxl_conversion_agrees_with_ours(sdxl, tmp_path):
    """diffusers' own kohya/SGM-name conversion is an upstream reference for our SDXL mapping."""
    g = torch.Generator().manual_seed(5)
    names = {"input_blocks_4_1_transformer_blocks_0_attn1_to_q": (64, 64),
             "middle_block_1_transformer_blocks_1_attn2_to_v": (128, 128),
             "output_blocks_1_1_proj_out": (128, 128),
             "output_blocks_4_1_transformer_blocks_0_ff_net_2": (64, 256)}
    sd = {}
    for n, (o, i) in names.items():
        sd[f"lora_unet_{n}.lora_down.weight"] = torch.randn(4, i, generator=g) * 0.1
        sd[f"lora_unet_{n}.lora_up.weight"] = torch.randn(o, 4, generator=g) * 0.1
        sd[f"lora_unet_{n}.alpha"] = torch.tensor(2.0)
    path = tmp_path / "sdxl_kohya.safetensors"
    save_file(sd, str(path))
    base = unet_out(sdxl.unet)
    theirs = copy.deepcopy(sdxl)
    theirs.load_lora_weights(str(path))
    apply_loras(sdxl, [(read_lora(path), 1.0)])
    ours = unet_out(sdxl.unet)
    assert (ours - base).abs().max() > 1e-4
    torch.testing.assert_close(unet_out(theirs.unet), ours, atol=2e-5, rtol=1e-4)
