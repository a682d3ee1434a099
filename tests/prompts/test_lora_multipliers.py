"""`<lora:name:te:unet>`: the text-encoder multiplier merges into text-encoder layers, the UNet one into the UNet.

A1111 (`extensions-builtin/Lora/network.py`, `NetworkModule.multiplier`) scales modules of the text encoder(s) by
`te_multiplier` and every other module by `unet_multiplier`; with te = 0 the text encoder is the base model's.
"""

import logging

import numpy as np
import pytest
import torch

from animegen.generate import GenerationRequest, Generator
from animegen.models.lora import LoraFile, LoraModule, apply_loras, remove_loras, write_lora

SIZE = {"width": 64, "height": 64, "steps": 1, "sampler": "Euler", "seed": 3}
UNET_Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


def _module(target: str, width: int, g: torch.Generator) -> LoraModule:
    return LoraModule(target, "lora", {"lora_down.weight": torch.randn(4, width, generator=g) * 0.5,
                                       "lora_up.weight": torch.randn(width, 4, generator=g) * 0.5}, alpha=4.0)


@pytest.fixture(scope="module")
def setup(tiny_sd15_dir, tmp_path_factory):
    """A Generator on the tiny SD1.5 model and a LoRA ("both") with one text-encoder and one UNet module."""
    folder = tmp_path_factory.mktemp("loras")
    g = torch.Generator().manual_seed(0)
    lora = LoraFile({UNET_Q: _module(UNET_Q, 32, g), TE_Q: _module(TE_Q, 64, g)}, {})
    write_lora(lora, folder / "both.safetensors", format="kohya")
    gen = Generator(tiny_sd15_dir, device="cpu", lora_dir=folder)
    yield gen, lora
    remove_loras(gen.pipe)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return sorted(k for k, v in module.state_dict().items() if not torch.equal(before[k], v))


def test_per_component_multiplier_merges_each_component_alone(setup):
    gen, lora = setup
    pipe = gen.pipe
    remove_loras(pipe)
    te, unet = _state(pipe.text_encoder), _state(pipe.unet)

    apply_loras(pipe, [(lora, {"text_encoder": 0.0, "unet": 1.0})])
    assert _changed(te, pipe.text_encoder) == []
    assert _changed(unet, pipe.unet) == [UNET_Q.removeprefix("unet.") + ".weight"]

    apply_loras(pipe, [(lora, {"text_encoder": 1.0, "unet": 0.0})])
    assert _changed(unet, pipe.unet) == []
    assert len(_changed(te, pipe.text_encoder)) == 1

    # Equal multipliers are the plain float, bit for bit; a component the mapping omits is not merged.
    apply_loras(pipe, [(lora, 0.5)])
    as_float = _state(pipe.text_encoder), _state(pipe.unet)
    apply_loras(pipe, [(lora, {"text_encoder": 0.5, "unet": 0.5})])
    assert _changed(as_float[0], pipe.text_encoder) == [] and _changed(as_float[1], pipe.unet) == []
    apply_loras(pipe, [(lora, {"unet": 1.0})])
    assert _changed(te, pipe.text_encoder) == []
    remove_loras(pipe)


def test_unknown_component_in_multiplier_is_refused(setup):
    gen, lora = setup
    with pytest.raises(ValueError, match="vae"):
        apply_loras(gen.pipe, [(lora, {"vae": 1.0})])


def test_prompt_tag_te_zero_leaves_text_encoder_untouched(setup):
    gen, _ = setup
    remove_loras(gen.pipe)
    te, unet = _state(gen.pipe.text_encoder), _state(gen.pipe.unet)
    base = gen(GenerationRequest("1girl", **SIZE))[0].array
    unet_only = gen(GenerationRequest("1girl <lora:both:0:1>", **SIZE))[0]
    assert _changed(te, gen.pipe.text_encoder) == []  # the LoRA stays merged after the request
    assert _changed(unet, gen.pipe.unet) != []
    named = gen(GenerationRequest("1girl <lora:both:te=0:unet=1>", **SIZE))[0]
    assert np.array_equal(named.array, unet_only.array)
    assert np.abs(unet_only.array - base).max() > 1e-4
    te_only = gen(GenerationRequest("1girl <lora:both:1:0>", **SIZE))[0]
    assert _changed(unet, gen.pipe.unet) == []
    assert _changed(te, gen.pipe.text_encoder) != []
    assert not np.array_equal(te_only.array, unet_only.array)
    remove_loras(gen.pipe)


def test_unsupported_network_tag_and_dyn_are_stripped_and_warned_about(setup, caplog):
    gen, _ = setup
    plain = gen(GenerationRequest("1girl", **SIZE))[0]
    with caplog.at_level(logging.WARNING):
        tagged = gen(GenerationRequest("1girl<hypernet:anime:0.8><lora:both:0:0:8>", **SIZE))[0]
    assert np.array_equal(tagged.array, plain.array)  # no tag is encoded as text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("<hypernet:anime:0.8>" in w for w in warnings)
    assert any("dyn=8" in w and "both" in w for w in warnings)
    assert "<hypernet:anime:0.8>" in tagged.infotext  # the prompt is recorded as given
