"""diffusers <-> LDM names: checked against the real released layouts and against diffusers' own converters."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from animegen.models.detect import family_config
from animegen.models.ldm_names import (
    UNET_PREFIX,
    open_clip_state_dict_to_ldm,
    text_encoder_module_map,
    unet_module_map,
    unet_state_dict_to_ldm,
    vae_module_map,
)

# Pairs as they appear in the released SD1.5 / SDXL checkpoints and their diffusers conversions.
SD1_UNET_PAIRS = {
    "down_blocks.1.attentions.0.proj_in": "input_blocks.4.1.proj_in",
    "mid_block.resnets.0.conv1": "middle_block.0.in_layers.2",
    "up_blocks.0.resnets.2.conv_shortcut": "output_blocks.2.0.skip_connection",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.3.resnets.1.conv2": "input_blocks.11.0.out_layers.3",
    "down_blocks.1.resnets.0.time_emb_proj": "input_blocks.4.0.emb_layers.1",
    "down_blocks.1.resnets.0.norm2": "input_blocks.4.0.out_layers.0",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": "middle_block.1.transformer_blocks.0.attn2.to_k",
    "mid_block.resnets.1.norm1": "middle_block.2.in_layers.0",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "up_blocks.3.resnets.0.conv_shortcut": "output_blocks.9.0.skip_connection",
    "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": "output_blocks.11.1.transformer_blocks.0.ff.net.2",
}
SDXL_UNET_PAIRS = {
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "down_blocks.1.downsamplers.0.conv": "input_blocks.6.0.op",
    "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k": "input_blocks.8.1.transformer_blocks.9.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj": "middle_block.1.transformer_blocks.9.ff.net.0.proj",
    "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
}
SD_VAE_PAIRS = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "encoder.down_blocks.1.resnets.0.conv_shortcut": "encoder.down.1.block.0.nin_shortcut",
    "encoder.down_blocks.2.downsamplers.0.conv": "encoder.down.2.downsample.conv",
    "encoder.mid_block.attentions.0.to_out.0": "encoder.mid.attn_1.proj_out",
    "decoder.mid_block.attentions.0.group_norm": "decoder.mid.attn_1.norm",
    "decoder.mid_block.attentions.0.to_q": "decoder.mid.attn_1.q",
    "decoder.mid_block.resnets.1.conv2": "decoder.mid.block_2.conv2",
    "decoder.up_blocks.0.resnets.2.conv2": "decoder.up.3.block.2.conv2",
    "decoder.up_blocks.1.upsamplers.0.conv": "decoder.up.2.upsample.conv",
    "decoder.up_blocks.3.resnets.0.conv_shortcut": "decoder.up.0.block.0.nin_shortcut",
    "post_quant_conv": "post_quant_conv",
}


def _param_modules(model: torch.nn.Module) -> set[str]:
    return {name.rpartition(".")[0] for name, _ in model.named_parameters()}


def test_unet_map_matches_released_sd15_and_sdxl_layouts():
    sd1 = unet_module_map(family_config("sd1", "unet"))
    xl = unet_module_map(family_config("sdxl", "unet"))
    for diffusers_name, ldm in SD1_UNET_PAIRS.items():
        assert sd1[diffusers_name] == ldm, diffusers_name
    for diffusers_name, ldm in SDXL_UNET_PAIRS.items():
        assert xl[diffusers_name] == ldm, diffusers_name


def test_vae_map_matches_released_layout():
    vae = vae_module_map(family_config("sd1", "vae"))
    for diffusers_name, ldm in SD_VAE_PAIRS.items():
        assert vae[diffusers_name] == ldm, diffusers_name


def test_unet_map_covers_every_weight_once_for_sdxl():
    from accelerate import init_empty_weights

    config = family_config("sdxl", "unet")
    with init_empty_weights():
        model = UNet2DConditionModel.from_config(config)
    mapping = unet_module_map(config)
    weights = _param_modules(model)
    assert weights <= set(mapping)
    targets = [mapping[m] for m in weights]
    assert len(targets) == len(set(targets)), "two diffusers modules share one LDM name"


def test_text_encoder_maps():
    sd1 = text_encoder_module_map("sd1", "text_encoder", 12)
    assert (sd1["text_model.encoder.layers.11.self_attn.q_proj"]
            == "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj")
    xl1 = text_encoder_module_map("sdxl", "text_encoder", 12)
    assert xl1["text_model.final_layer_norm"] == "conditioner.embedders.0.transformer.text_model.final_layer_norm"
    xl2 = text_encoder_module_map("sdxl", "text_encoder_2", 32)
    assert xl2["text_model.encoder.layers.31.mlp.fc1"] == "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc"
    assert xl2["text_model.encoder.layers.0.layer_norm2"] == "conditioner.embedders.1.model.transformer.resblocks.0.ln_2"
    assert xl2["text_model.encoder.layers.3.self_attn.k_proj"] == "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj"
    assert xl2["text_projection"] == "conditioner.embedders.1.model.text_projection"
    sd2 = text_encoder_module_map("sd2", "text_encoder", 23)
    assert sd2["text_model.embeddings.token_embedding"] == "cond_stage_model.model.token_embedding"


def test_open_clip_fuses_qkv_and_transposes_projection():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
                            projection_dim=32, hidden_act="gelu")
    model = CLIPTextModelWithProjection(config)
    out = open_clip_state_dict_to_ldm(model.state_dict(), config)
    layer = model.text_model.encoder.layers[1].self_attn
    expected = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(out["model.transformer.resblocks.1.attn.in_proj_weight"], expected)
    assert torch.equal(out["model.transformer.resblocks.1.attn.in_proj_bias"][64:128], layer.k_proj.bias)
    assert out["model.text_projection"].shape == (64, 32)
    assert torch.equal(out["model.text_projection"], model.text_projection.weight.T)
    assert torch.equal(out["model.positional_embedding"], model.text_model.embeddings.position_embedding.weight)
    assert "model.ln_final.weight" in out and "model.transformer.resblocks.0.mlp.c_proj.bias" in out


def test_unusual_unet_layout_round_trips_through_diffusers_converter():
    """3 levels, 1 layer per block, attention only in the middle level, depth 2, linear projections."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 2, 1), attention_head_dim=(1, 1, 1),
        cross_attention_dim=32, use_linear_projection=True, norm_num_groups=32,
    )
    original = unet.state_dict()
    ldm = {UNET_PREFIX + k: v for k, v in unet_state_dict_to_ldm(original, unet.config).items()}
    assert "model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn1.to_q.weight" in ldm
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in ldm  # upsampler after a plain level
    assert "model.diffusion_model.output_blocks.3.2.conv.weight" in ldm  # upsampler after an attention
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
