"""Architecture detection from checkpoint keys, config inference from shapes, and SD2 loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from animegen.models.detect import CheckpointError, detect_architecture, infer_configs
from animegen.models.ldm_names import open_clip_state_dict_to_ldm
from animegen.models.single_file import load_single_file, pipeline_to_ldm
from animegen.models.tiny import build_tiny_pipeline

T = torch.zeros(1)
UNET_IN = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
VAE = {"first_stage_model.decoder.conv_in.weight": T}
SD1_TE = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": T}
SD2_TE = {"cond_stage_model.model.token_embedding.weight": T}
XL_TE = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": T,
         "conditioner.embedders.1.model.positional_embedding": T}


@pytest.mark.parametrize(("keys", "family", "prediction"), [
    ({**UNET_IN, **VAE, **SD1_TE}, "sd1", "epsilon"),
    ({**UNET_IN, **VAE, **SD1_TE, "v_pred": T}, "sd1", "v_prediction"),
    ({**UNET_IN, **VAE, **SD2_TE}, "sd2", "v_prediction"),
    ({**UNET_IN, **VAE, **XL_TE}, "sdxl", "epsilon"),
    ({**UNET_IN, **VAE, **XL_TE, "v_pred": T, "ztsnr": T}, "sdxl", "v_prediction"),
])
def test_detects_family_and_prediction(keys, family, prediction):
    info = detect_architecture(keys)
    assert (info.family, info.prediction_type) == (family, prediction)
    assert info.zero_terminal_snr == ("ztsnr" in keys)
    info.check_complete()


def test_metadata_prediction_type_and_inpainting():
    sd = {**VAE, **SD1_TE, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3)}
    info = detect_architecture(sd, {"modelspec.prediction_type": "v"})
    assert info.prediction_type == "v_prediction" and info.is_inpainting and info.in_channels == 9
    assert detect_architecture({**UNET_IN, **VAE, **SD2_TE}, {"modelspec.prediction_type": "epsilon"}).prediction_type \
        == "epsilon"


@pytest.mark.parametrize(("keys", "message"), [
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": T}, "SD3"),
    ({"double_blocks.0.img_attn.qkv.weight": T}, "Flux"),
    ({**UNET_IN, "conditioner.embedders.0.model.text_projection": T}, "refiner"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": T}, "LoRA"),
    ({"encoder.conv_in.weight": T, "decoder.conv_in.weight": T}, "standalone VAE"),
    ({"down_blocks.0.resnets.0.conv1.weight": T}, "diffusers-format"),
    ({"some.other.weight": T}, "found top-level keys some.other"),
    ({}, "no tensors"),
])
def test_rejects_other_files_by_name(keys, message):
    with pytest.raises(CheckpointError, match=message):
        detect_architecture(keys)


def test_incomplete_checkpoints_say_what_is_missing():
    with pytest.raises(CheckpointError, match="--vae"):
        detect_architecture({**UNET_IN, **SD1_TE}).check_complete()
    detect_architecture({**UNET_IN, **SD1_TE}).check_complete(vae_given=True)
    unet_only = {**UNET_IN, **VAE, "model.diffusion_model.label_emb.0.0.weight": T}
    info = detect_architecture(unet_only)
    assert info.family == "sdxl"
    with pytest.raises(CheckpointError, match="text_encoder .*text_encoder_2"):
        info.check_complete()


def test_infers_sizes_from_shapes_with_family_head_rules():
    pipe = build_tiny_pipeline("sdxl")
    sd = pipeline_to_ldm(pipe)
    configs = infer_configs(sd, detect_architecture(sd))
    unet, te2 = configs["unet"], configs["text_encoder_2"]
    assert unet["block_out_channels"] == [64, 64, 128]
    assert unet["transformer_layers_per_block"] == [1, 1, 2]
    assert unet["attention_head_dim"] == [1, 1, 2]  # 64 channels per head
    assert unet["cross_attention_dim"] == 128 and unet["use_linear_projection"] is True
    assert unet["addition_time_embed_dim"] == 8 and unet["projection_class_embeddings_input_dim"] == 112
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert (te2["hidden_size"], te2["num_hidden_layers"], te2["intermediate_size"], te2["projection_dim"]) == \
        (64, 4, 256, 64)
    assert configs["vae"]["block_out_channels"] == [32, 32, 64, 64]
    assert configs["scheduler"]["prediction_type"] == "epsilon"


def test_sd2_open_clip_file_loads_with_penultimate_layer(tmp_path):
    """SD2: OpenCLIP-H text encoder whose last block diffusers drops; the UNet decides the prediction type
    (test_sd2_prediction.py)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    base = build_tiny_pipeline("sd15")
    sd = {k: v for k, v in pipeline_to_ldm(base).items() if not k.startswith("cond_stage_model.")}
    torch.manual_seed(5)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=1, hidden_act="gelu", projection_dim=32)
    full = CLIPTextModel(config)
    te = {f"cond_stage_model.{k}": v for k, v in open_clip_state_dict_to_ldm(
        full.state_dict(), config, logit_scale=False).items()}
    te["cond_stage_model.model.text_projection"] = torch.zeros(64, 32)
    save_file({**sd, **te}, str(tmp_path / "sd2.safetensors"))
    pipe = load_single_file(tmp_path / "sd2.safetensors")
    assert pipe.arch_info.family == "sd2"
    assert pipe.arch_info.prediction_source == "UNet output test"
    assert pipe.text_encoder.config.num_hidden_layers == 2
    assert pipe.text_encoder.config.hidden_act == "gelu"
    ours = pipe.text_encoder.state_dict()
    for key, value in full.state_dict().items():
        if "layers.2." in key or key.endswith("position_ids"):
            continue
        assert torch.equal(ours[key], value), key
    for key, value in base.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key


def _real_layout_state_dict(family: str) -> dict:
    """Shape-only (meta) LDM state dict of the released model, built from the shipped configs."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from animegen.models.detect import family_config
    from animegen.models.ldm_names import (
        TEXT_ENCODER_PREFIXES,
        clip_state_dict_to_ldm,
        unet_state_dict_to_ldm,
        vae_state_dict_to_ldm,
    )

    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(family_config(family, "unet"))
        vae = AutoencoderKL.from_config(family_config(family, "vae"))
        te = CLIPTextModel(CLIPTextConfig(**family_config(family, "text_encoder")))
        te2 = (CLIPTextModelWithProjection(CLIPTextConfig(**family_config(family, "text_encoder_2")))
               if family == "sdxl" else None)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet_state_dict_to_ldm(unet.state_dict(), unet.config).items()}
    sd |= {f"first_stage_model.{k}": v for k, v in vae_state_dict_to_ldm(vae.state_dict(), vae.config).items()}
    prefixes = TEXT_ENCODER_PREFIXES[family]
    sd |= {prefixes["text_encoder"] + k: v for k, v in clip_state_dict_to_ldm(te.state_dict()).items()}
    if te2 is not None:
        sd |= {prefixes["text_encoder_2"] + k: v
               for k, v in open_clip_state_dict_to_ldm(te2.state_dict(), te2.config).items()}
    return sd


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_inference_recovers_the_released_configs(family):
    from animegen.models.detect import family_config

    sd = _real_layout_state_dict(family)
    configs = infer_configs(sd, detect_architecture(sd))
    released = {c: family_config(family, c) for c in configs}
    unet_keys = ["in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                 "up_block_types", "cross_attention_dim", "attention_head_dim"]
    if family == "sdxl":
        unet_keys += ["transformer_layers_per_block", "addition_time_embed_dim",
                      "projection_class_embeddings_input_dim", "use_linear_projection"]
    else:
        assert configs["unet"]["use_linear_projection"] is False
    for key in unet_keys:
        assert configs["unet"][key] == released["unet"][key], key
    for key in ["block_out_channels", "layers_per_block", "latent_channels", "scaling_factor"]:
        assert configs["vae"][key] == released["vae"][key], key
    encoders = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    for name in encoders:
        for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "vocab_size"]:
            assert configs[name][key] == released[name][key], (name, key)
    if family == "sdxl":
        assert configs["text_encoder_2"]["projection_dim"] == 1280
