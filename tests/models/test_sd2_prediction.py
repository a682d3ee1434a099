"""SD2 single files: 512-base is epsilon, 768-v is v-prediction, decided as A1111 1.10 decides; OpenCLIP padding.

References, written from A1111 1.10 `modules/sd_models_config.py` (not from our code):
- `guess_model_config_from_state_dict`: an SD2 file (OpenCLIP `cond_stage_model.model.*`) with 9 input channels
  is the (epsilon) inpainting config; otherwise `is_using_v_parameterization_for_sd2` runs the UNet once on
  x = 0.5 (1, 4, 8, 8), t = 999, context = 0.5 (1, 2, 1024) and calls it v-prediction when mean(out - x) < -1.
  ComfyUI (`supported_models.SD20.model_type`) also treats only 4-channel SD2 models as possibly v.
- A1111's SD2 prompt chunks are BOS, tokens, EOS, then the pad id 0 (`!`) up to 77 (`sd_hijack_clip.py`
  `process_tokens` with `FrozenOpenCLIPEmbedderWithCustomWords.id_pad = 0`).

The tiny SD2 UNet's output is made a known constant (zero `conv_out` weights, bias b) so the test's verdict is
known: b = 0 gives mean(out - x) = -0.5 (epsilon), b = -2 gives -2.5 (v).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from animegen.models.detect import detect_architecture
from animegen.models.ldm_names import (
    UNET_PREFIX,
    VAE_PREFIX,
    open_clip_state_dict_to_ldm,
    unet_state_dict_to_ldm,
    vae_state_dict_to_ldm,
)
from animegen.models.single_file import load_single_file
from animegen.models.tiny import build_tiny_pipeline
from animegen.prompts.encode import encode_prompts

T = torch.zeros(1)
SD2_KEYS = {"cond_stage_model.model.token_embedding.weight": T, "first_stage_model.decoder.conv_in.weight": T}


@pytest.fixture(scope="module")
def sd2():
    return build_tiny_pipeline("sd2")


def _write_sd2(pipe, path, conv_out_bias: float, extra=None, metadata=None):
    """An A1111-layout SD2 file of `pipe` whose UNet outputs `conv_out_bias` everywhere."""
    unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    unet["conv_out.weight"].zero_()
    unet["conv_out.bias"].fill_(conv_out_bias)
    sd = {UNET_PREFIX + k: v for k, v in unet_state_dict_to_ldm(unet, pipe.unet.config).items()}
    sd |= {VAE_PREFIX + k: v for k, v in vae_state_dict_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()}
    # diffusers' SD2 encoder stops one block before OpenCLIP's last (SD2 reads the penultimate layer): add it back
    config = pipe.text_encoder.config.to_dict()
    full_config = CLIPTextConfig(**{**config, "num_hidden_layers": config["num_hidden_layers"] + 1})
    full = CLIPTextModel(full_config)
    full.load_state_dict(pipe.text_encoder.state_dict(), strict=False)
    te = open_clip_state_dict_to_ldm(full.state_dict(), full_config)
    te["model.text_projection"] = torch.zeros(full_config.hidden_size, full_config.hidden_size)
    sd |= {"cond_stage_model." + k: v for k, v in te.items()}
    save_file({k: v.contiguous() for k, v in {**sd, **(extra or {})}.items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(("bias", "expected"), [(0.0, "epsilon"), (-2.0, "v_prediction")])
def test_sd2_prediction_type_follows_a1111s_unet_output_test(sd2, tmp_path, bias, expected):
    pipe = load_single_file(_write_sd2(sd2, tmp_path / "sd2.safetensors", bias))
    assert pipe.arch_info.family == "sd2"
    assert pipe.arch_info.prediction_type == expected
    assert pipe.scheduler.config.prediction_type == expected


def test_explicit_marks_win_over_the_unet_test(sd2, tmp_path):
    v_key = _write_sd2(sd2, tmp_path / "vkey.safetensors", 0.0, extra={"v_pred": torch.tensor([])})
    assert load_single_file(v_key).scheduler.config.prediction_type == "v_prediction"
    eps_meta = _write_sd2(sd2, tmp_path / "eps.safetensors", -2.0, metadata={"modelspec.prediction_type": "epsilon"})
    assert load_single_file(eps_meta).scheduler.config.prediction_type == "epsilon"


def test_sd2_inpainting_is_epsilon_from_keys():
    inpaint = {**SD2_KEYS, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3)}
    assert detect_architecture(inpaint).prediction_type == "epsilon"


def test_sd2_chunks_pad_with_exclamation_mark_id_0_after_the_end_token(sd2):
    tokenizer = sd2.tokenizer
    assert tokenizer.convert_tokens_to_ids("!") == 0 != tokenizer.eos_token_id
    words = tokenizer("1girl, smile", add_special_tokens=False).input_ids
    ids = [tokenizer.bos_token_id, *words, tokenizer.eos_token_id]
    ids += [0] * (77 - len(ids))
    with torch.no_grad():
        expected = sd2.text_encoder(torch.tensor([ids])).last_hidden_state
    cond = encode_prompts(sd2, "1girl, smile", "")
    torch.testing.assert_close(cond.prompt_embeds, expected, rtol=0, atol=1e-6)
