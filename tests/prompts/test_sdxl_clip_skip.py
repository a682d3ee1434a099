"""Clip skip per family, against direct transformers calls (not encode.py, not diffusers' `encode_prompt`).

Reference, A1111 1.10 (`modules/sd_hijack_clip.py`, `sd_hijack_open_clip.py`, `sd_xl_base.yaml`): SDXL conditions
on the penultimate hidden state of both encoders (CLIP-L `layer_idx: 11` of 12, bigG `layer: penultimate`), with
no final layer norm, and "Clip skip" does not change it (the CLIP-L-only `sdxl_clip_l_skip` option is off by
default; kohya sd-scripts: "SDXL学習ではclip_skipは動作しません"). Forge / ComfyUI agree for clip skip 1 and 2.
SD1: clip skip k = `hidden_states[-k]` then the final layer norm.
"""

from __future__ import annotations

import logging

import pytest
import torch

from animegen.models.tiny import build_tiny_pipeline
from animegen.prompts.encode import encode_prompts, encode_text

PROMPT = "1girl, solo, silver hair, smile"


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_pipeline("sdxl")


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _sdxl_reference(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden_states[-2] of both encoders, concatenated; pooled = bigG's projected pooled output."""
    with torch.no_grad():
        out_l = pipe.text_encoder(_ids(pipe.tokenizer, text), output_hidden_states=True)
        out_g = pipe.text_encoder_2(_ids(pipe.tokenizer_2, text), output_hidden_states=True)
    return torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1), out_g.text_embeds


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sdxl_clip_skip_1_and_2_use_the_penultimate_layer_of_both_encoders(sdxl, clip_skip):
    embeds, pooled = _sdxl_reference(sdxl, PROMPT)
    cond = encode_prompts(sdxl, PROMPT, "", clip_skip=clip_skip)
    torch.testing.assert_close(cond.prompt_embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond.pooled_prompt_embeds, pooled, rtol=0, atol=1e-6)


def test_sdxl_higher_clip_skip_is_ignored_with_a_warning(sdxl, caplog):
    """A1111 1.10 ignores clip skip on SDXL at any value; we do too and say so (Forge/ComfyUI go deeper)."""
    embeds, _ = _sdxl_reference(sdxl, PROMPT)
    tokenizers, encoders = [sdxl.tokenizer, sdxl.tokenizer_2], [sdxl.text_encoder, sdxl.text_encoder_2]
    with caplog.at_level(logging.WARNING, logger="animegen.prompts.encode"), torch.no_grad():
        cond = encode_text(tokenizers, encoders, PROMPT, clip_skip=3, arch="sdxl")
    torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=1e-6)
    assert "clip skip 3" in caplog.text.lower() and "sdxl" in caplog.text.lower()


def test_sd1_clip_skip_2_is_penultimate_plus_final_layer_norm():
    pipe = build_tiny_pipeline("sd15")
    encoder = pipe.text_encoder
    text_model = getattr(encoder, "text_model", encoder)  # transformers 5 drops the `text_model` level
    with torch.no_grad():
        out = encoder(_ids(pipe.tokenizer, PROMPT), output_hidden_states=True)
        expected = {1: out.last_hidden_state, 2: text_model.final_layer_norm(out.hidden_states[-2])}
    for clip_skip, reference in expected.items():
        cond = encode_prompts(pipe, PROMPT, "", clip_skip=clip_skip)
        torch.testing.assert_close(cond.prompt_embeds, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd2_clip_skip_does_not_reach_its_open_clip_encoder(clip_skip):
    """A1111 reads SD2's OpenCLIP at its penultimate layer whatever "Clip skip" says (`sd_hijack_open_clip.py`);
    the diffusers conversion already dropped the last layer, so that is last_hidden_state (final norm applied)."""
    pipe = build_tiny_pipeline("sd2")
    with torch.no_grad():
        reference = pipe.text_encoder(_ids(pipe.tokenizer, PROMPT)).last_hidden_state
    cond = encode_prompts(pipe, PROMPT, "", clip_skip=clip_skip)
    torch.testing.assert_close(cond.prompt_embeds, reference, rtol=0, atol=1e-6)
