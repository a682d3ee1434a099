"""LoRAs through the generation engine: --lora files, inline <lora:name:w> tags, infotext, re-runs."""

import numpy as np
import pytest
import torch

from animegen.generate import GenerationRequest, Generator, request_from_infotext
from animegen.models.lora import LoraFile, LoraModule, lora_hash, write_lora

SIZE = dict(width=64, height=64, steps=2, sampler="Euler", seed=11)


@pytest.fixture(scope="module")
def lora_setup(tiny_sd15_dir, tmp_path_factory):
    """A random kohya LoRA on two attention projections of the tiny SD1.5 UNet, in a LoRA folder."""
    folder = tmp_path_factory.mktemp("loras")
    g = torch.Generator().manual_seed(0)
    modules = {}
    for target, dim in (("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 32),
                        ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 64)):
        in_dim = 64 if "attn2.to_v" in target else dim
        modules[target] = LoraModule(target, "lora", {
            "lora_down.weight": torch.randn(4, in_dim, generator=g) * 0.5,
            "lora_up.weight": torch.randn(dim, 4, generator=g) * 0.5,
        }, alpha=4.0)
    path = write_lora(LoraFile(modules, {}), folder / "spiky.safetensors", format="kohya")
    return Generator(tiny_sd15_dir, device="cpu", lora_dir=folder), path


def test_lora_weight_zero_is_no_lora_and_weight_matters(lora_setup):
    gen, path = lora_setup
    base = gen(GenerationRequest("1girl", **SIZE))[0].array
    zero = gen(GenerationRequest("1girl", loras=[(str(path), 0.0)], **SIZE))[0].array
    one = gen(GenerationRequest("1girl", loras=[(str(path), 1.0)], **SIZE))[0].array
    assert np.array_equal(base, zero)
    assert np.abs(one - base).max() > 1e-3
    after = gen(GenerationRequest("1girl", **SIZE))[0].array
    assert np.array_equal(base, after)  # the next request without the LoRA gets the base model back


def test_inline_tag_equals_file_option_and_is_recorded(lora_setup):
    gen, path = lora_setup
    by_file = gen(GenerationRequest("1girl", loras=[(str(path), 0.7)], **SIZE))[0]
    by_tag = gen(GenerationRequest("1girl <lora:spiky:0.7>", **SIZE))[0]
    assert np.array_equal(by_file.array, by_tag.array)
    assert "<lora:spiky:0.7>" in by_file.infotext
    assert f'Lora hashes: "spiky: {lora_hash(path)}"' in by_file.infotext
    again = gen(request_from_infotext(by_file.infotext))[0]  # re-run from the PNG text
    assert np.array_equal(again.array, by_file.array)


def test_prompt_tags_cannot_name_files_outside_the_lora_folder(lora_setup, tmp_path):
    gen, path = lora_setup
    outside = tmp_path / "evil.safetensors"
    outside.write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="known LoRAs: spiky"):
        gen(GenerationRequest(f"1girl <lora:{outside.with_suffix('')}:1>", **SIZE))


def test_unreadable_lora_is_a_clear_error(lora_setup, tmp_path):
    gen, _ = lora_setup
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors: not a readable .safetensors file"):
        gen(GenerationRequest("1girl", loras=[(str(broken), 1.0)], **SIZE))
