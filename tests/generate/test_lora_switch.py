"""LoRAs between requests: a request with the LoRAs (and weights) already merged merges nothing again; a
different set, an edited file or weights restored behind the engine's back re-merge, and every image
equals the one a fresh engine makes (A1111 likewise keeps loaded networks while the prompt's set and
multipliers stay the same)."""

import numpy as np
import pytest
import torch

import animegen.models.lora as lora_pkg
from animegen.generate import GenerationRequest, Generator
from animegen.models.lora import LoraFile, LoraModule, remove_loras, write_lora

SIZE = dict(width=64, height=64, steps=2, sampler="Euler", seed=3)
TARGET = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _lora(path, seed):
    g = torch.Generator().manual_seed(seed)
    module = LoraModule(TARGET, "lora", {"lora_down.weight": torch.randn(4, 32, generator=g),
                                         "lora_up.weight": torch.randn(32, 4, generator=g)}, alpha=4.0)
    return write_lora(LoraFile({TARGET: module}, {}), path, format="kohya")


@pytest.fixture
def engine(tiny_sd15_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "loras"
    folder.mkdir()
    _lora(folder / "a.safetensors", 0)
    _lora(folder / "b.safetensors", 1)
    merges = []
    real = lora_pkg.apply_loras
    monkeypatch.setattr(lora_pkg, "apply_loras", lambda pipe, loras, **kw: merges.append(1) or real(pipe, loras, **kw))
    return Generator(tiny_sd15_dir, device="cpu", lora_dir=folder), folder, merges


def _image(gen, prompt):
    return gen(GenerationRequest(prompt, **SIZE))[0].array


def test_the_same_loras_again_merge_nothing(engine):
    gen, _, merges = engine
    first = _image(gen, "1girl <lora:a:0.8>")
    again = _image(gen, "1girl <lora:a:0.8>")
    assert len(merges) == 1
    assert np.array_equal(first, again)


def test_another_set_an_edited_file_or_restored_weights_merge_again(engine, tiny_sd15_dir):
    gen, folder, merges = engine
    a = _image(gen, "1girl <lora:a:0.8>")
    assert not np.array_equal(_image(gen, "1girl <lora:a:0.5>"), a)  # another weight
    assert np.array_equal(_image(gen, "1girl <lora:a:0.8>"), a)
    b = _image(gen, "1girl <lora:b:0.8>")
    assert len(merges) == 4
    remove_loras(gen.pipe)  # weights restored by someone else: the engine notices
    assert np.array_equal(_image(gen, "1girl <lora:b:0.8>"), b)
    assert len(merges) == 5
    _lora(folder / "b.safetensors", 2)  # the file replaced under the same name
    edited = _image(gen, "1girl <lora:b:0.8>")
    fresh = Generator(tiny_sd15_dir, device="cpu", lora_dir=folder)
    assert np.array_equal(edited, _image(fresh, "1girl <lora:b:0.8>"))
    assert not np.array_equal(edited, b)


def test_engines_lent_one_pipe_see_each_others_merges(engine):
    gen, folder, _ = engine
    other = Generator(pipe=gen.pipe, lora_dir=folder)
    a = _image(gen, "1girl <lora:a:0.8>")
    b = _image(other, "1girl <lora:b:0.8>")  # same targets, so the same merged tensor count as a
    assert not np.array_equal(a, b)
    assert np.array_equal(_image(gen, "1girl <lora:a:0.8>"), a)
