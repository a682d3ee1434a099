"""Each format/algorithm merged by `apply_loras` equals the delta computed by hand in the test."""

from __future__ import annotations

import itertools

import pytest
import torch
from lora_testutils import check_unet, kron, layer, merged_copy, save_lora, te_out

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # Linear 32 -> 32 in tiny SD1.5
CONV = "down_blocks.1.resnets.0.conv1"                             # Conv 32 -> 32, 3x3 in tiny SD1.5
FF = "mid_block.attentions.0.transformer_blocks.0.ff.net.2"       # Linear 256 -> 64
TE_Q = "text_model.encoder.layers.1.self_attn.q_proj"             # Linear 64 -> 64


_SEED = itertools.count(1)


def _rand(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(next(_SEED))) * 0.1


def test_kohya_lora_unet_and_text_encoder(sd15, tmp_path):
    r, alpha = 4, 2.0
    down, up = _rand(r, 32), _rand(32, r)
    te_down, te_up = _rand(r, 64), _rand(64, r)
    path = save_lora(tmp_path, {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(alpha),
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight": te_down,
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight": te_up,
    })
    te_ref = merged_copy(sd15.text_encoder, {TE_Q: 0.8 * (te_up @ te_down)})  # no alpha key: scale 1
    check_unet(sd15, path, {Q: up @ down * (alpha / r)}, multiplier=0.8)
    torch.testing.assert_close(te_out(sd15.text_encoder), te_out(te_ref), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer(sd15.text_encoder, TE_Q).weight, layer(te_ref, TE_Q).weight,
                               atol=1e-6, rtol=0)


def test_kohya_locon_conv_and_tucker(sd15, tmp_path):
    r, alpha = 3, 1.5
    down, up = _rand(r, 32, 3, 3), _rand(32, r, 1, 1)
    # Tucker LoCon on another 3x3 conv: 1x1 down/up, kxk core
    t_down, t_mid, t_up = _rand(r, 64, 1, 1), _rand(r, r, 3, 3), _rand(64, r, 1, 1)
    conv2 = "down_blocks.2.resnets.1.conv2"
    path = save_lora(tmp_path, {
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight": down,
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight": up,
        "lora_unet_down_blocks_1_resnets_0_conv1.alpha": torch.tensor(alpha),
        "lora_unet_down_blocks_2_resnets_1_conv2.lora_down.weight": t_down,
        "lora_unet_down_blocks_2_resnets_1_conv2.lora_mid.weight": t_mid,
        "lora_unet_down_blocks_2_resnets_1_conv2.lora_up.weight": t_up,
    })
    d_conv = torch.zeros(32, 32, 3, 3)
    for o in range(32):
        for i in range(32):
            d_conv[o, i] = sum(up[o, k, 0, 0] * down[k, i] for k in range(r))
    d_tucker = torch.einsum("oa,abxy,bi->oixy", t_up[:, :, 0, 0], t_mid, t_down[:, :, 0, 0])
    check_unet(sd15, path, {CONV: d_conv * (alpha / r), conv2: d_tucker})


def test_loha_linear_and_tucker_conv(sd15, tmp_path):
    r, alpha = 4, 8.0
    w1a, w1b, w2a, w2b = _rand(32, r), _rand(r, 32), _rand(32, r), _rand(r, 32)
    c1a, c1b, c2a, c2b = _rand(r, 32), _rand(r, 32), _rand(r, 32), _rand(r, 32)  # tucker: [rank, out/in]
    t1, t2 = _rand(r, r, 3, 3), _rand(r, r, 3, 3)
    k, c = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "lora_unet_down_blocks_1_resnets_0_conv1"
    path = save_lora(tmp_path, {
        f"{k}.hada_w1_a": w1a, f"{k}.hada_w1_b": w1b, f"{k}.hada_w2_a": w2a, f"{k}.hada_w2_b": w2b,
        f"{k}.alpha": torch.tensor(alpha),
        f"{c}.hada_w1_a": c1a, f"{c}.hada_w1_b": c1b, f"{c}.hada_w2_a": c2a, f"{c}.hada_w2_b": c2b,
        f"{c}.hada_t1": t1, f"{c}.hada_t2": t2,
    })
    lin = (w1a @ w1b) * (w2a @ w2b) * (alpha / r)
    f1 = torch.einsum("abxy,ao,bi->oixy", t1, c1a, c1b)
    f2 = torch.einsum("abxy,ao,bi->oixy", t2, c2a, c2b)
    check_unet(sd15, path, {Q: lin, CONV: f1 * f2})


def test_lokr_full_factorised_and_conv(sd15, tmp_path):
    k, f, c = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
               "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
               "lora_unet_down_blocks_1_resnets_0_conv1")
    w1, w2 = _rand(4, 4), _rand(8, 8)                       # both full: alpha must be ignored
    r, alpha = 2, 1.0
    a1, b1, w2f = _rand(8, r), _rand(r, 16), _rand(8, 16)   # factorised w1 (64x256 layer)
    cw1, cw2 = _rand(4, 4), _rand(8, 8, 3, 3)
    path = save_lora(tmp_path, {
        f"{k}.lokr_w1": w1, f"{k}.lokr_w2": w2, f"{k}.alpha": torch.tensor(123.0),
        f"{f}.lokr_w1_a": a1, f"{f}.lokr_w1_b": b1, f"{f}.lokr_w2": w2f, f"{f}.alpha": torch.tensor(alpha),
        f"{c}.lokr_w1": cw1, f"{c}.lokr_w2": cw2,
    })
    check_unet(sd15, path, {Q: kron(w1, w2), FF: kron(a1 @ b1, w2f) * (alpha / r), CONV: kron(cw1, cw2)})


def test_ia3_scales_rows_or_columns(sd15, tmp_path):
    k_out = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k_in = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    w_out, w_in = _rand(32) * 10, _rand(256) * 10
    path = save_lora(tmp_path, {f"{k_out}.weight": w_out, f"{k_out}.on_input": torch.tensor(False),
                            f"{k_in}.weight": w_in, f"{k_in}.on_input": torch.tensor(True)})
    wq = sd15.unet.get_submodule(Q).weight.detach().clone()
    wf = sd15.unet.get_submodule(FF).weight.detach().clone()
    m = 0.7
    # LyCORIS merge: W' = W * (1 + m * w) along the scaled axis; _check_unet multiplies deltas by m
    d_q = torch.stack([wq[o] * w_out[o] for o in range(32)])
    d_f = torch.stack([wf[:, i] * w_in[i] for i in range(256)], dim=1)
    check_unet(sd15, path, {Q: d_q, FF: d_f}, multiplier=m)


def test_full_diff_with_bias(sd15, tmp_path):
    diff, diff_b = _rand(64, 256), _rand(64)
    k = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    path = save_lora(tmp_path, {f"{k}.diff": diff, f"{k}.diff_b": diff_b})
    check_unet(sd15, path, {FF: diff}, bias_deltas={FF: diff_b}, multiplier=0.5)


@pytest.mark.parametrize("layout", ["peft", "old_diffusers", "peft_prefix"])
def test_diffusers_layouts(sd15, tmp_path, layout):
    r, alpha = 4, 2.0
    down, up = _rand(r, 32), _rand(32, r)
    if layout == "peft":
        sd = {f"unet.{Q}.lora_A.weight": down, f"unet.{Q}.lora_B.weight": up}
        delta = up @ down
    elif layout == "old_diffusers":
        sd = {f"unet.{Q}.lora.down.weight": down, f"unet.{Q}.lora.up.weight": up, f"unet.{Q}.alpha": torch.tensor(alpha)}
        delta = up @ down * (alpha / r)
    else:
        sd = {f"base_model.model.{Q}.lora_A.weight": down, f"base_model.model.{Q}.lora_B.weight": up}
        delta = up @ down
    check_unet(sd15, save_lora(tmp_path, sd), {Q: delta})


def test_sdxl_kohya_ldm_names(sdxl, tmp_path):
    r = 2
    # LDM/SGM names as kohya writes them for SDXL; the diffusers path is spelled out by hand here.
    cases = {
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q": ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 64, 64),
        "input_blocks_8_1_proj_in": ("down_blocks.2.attentions.1.proj_in", 128, 128),
        "middle_block_1_transformer_blocks_1_attn2_to_k": ("mid_block.attentions.0.transformer_blocks.1.attn2.to_k", 128, 128),
        "output_blocks_2_1_transformer_blocks_0_ff_net_0_proj": ("up_blocks.0.attentions.2.transformer_blocks.0.ff.net.0.proj", 1024, 128),
        "output_blocks_5_0_skip_connection": ("up_blocks.1.resnets.2.conv_shortcut", 64, 128),
    }
    tensors, deltas = {}, {}
    for ldm, (diffusers, out_f, in_f) in cases.items():
        down = _rand(r, in_f, 1, 1) if "skip" in ldm else _rand(r, in_f)
        up = _rand(out_f, r, 1, 1) if "skip" in ldm else _rand(out_f, r)
        tensors[f"lora_unet_{ldm}.lora_down.weight"] = down
        tensors[f"lora_unet_{ldm}.lora_up.weight"] = up
        tensors[f"lora_unet_{ldm}.alpha"] = torch.tensor(1.0)
        deltas[diffusers] = (up.flatten(1) @ down.flatten(1)).reshape(out_f, in_f, *([1, 1] if "skip" in ldm else [])) / r
    te2_down, te2_up = _rand(r, 256), _rand(64, r)
    tensors["lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_down.weight"] = te2_down
    tensors["lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_up.weight"] = te2_up
    te2_ref = merged_copy(sdxl.text_encoder_2, {"text_model.encoder.layers.0.mlp.fc2": te2_up @ te2_down})
    te1_before = te_out(sdxl.text_encoder)
    check_unet(sdxl, save_lora(tmp_path, tensors), deltas)
    torch.testing.assert_close(te_out(sdxl.text_encoder_2), te_out(te2_ref), atol=1e-5, rtol=1e-4)
    assert torch.equal(te_out(sdxl.text_encoder), te1_before)  # lora_te2_ must not touch encoder 1
