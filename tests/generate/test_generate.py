"""The generation engine against A1111's sampling written out by hand over the same diffusers modules
(`pipeline_reference`: diffusers' own prompt encoding, the independent sampler reference), plus seeds,
batches, img2img, hires, interrupt."""

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from animegen.generate import GenerationInterrupted, GenerationRequest, Generator
from pipeline_reference import a1111_images

SIZE = dict(width=64, height=64)


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir):
    return Generator(tiny_sd15_dir, device="cpu")


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return Generator(tiny_sdxl_dir, device="cpu")


def _diffusers_reference(cls, folder, sampler, prompt, negative, steps, cfg, seed, **extra):
    kw = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
    pipe = cls.from_pretrained(folder, **kw)
    return a1111_images(pipe, sampler, prompt, negative, steps, cfg, seed, **SIZE, **extra)[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras"])
def test_sd15_equals_a1111_over_diffusers_modules(sd15, tiny_sd15_dir, sampler):
    req = GenerationRequest("1girl, red hair, smile", negative_prompt="lowres", sampler=sampler, steps=4,
                            cfg_scale=7.0, seed=123, rng="CPU", **SIZE)  # the reference draws CPU noise
    ours = sd15(req)[0]
    ref = _diffusers_reference(StableDiffusionPipeline, tiny_sd15_dir, sampler, req.prompt, "lowres", 4, 7.0, 123)
    assert np.abs(ours.array - ref).max() <= 1e-4
    assert ours.image.size == (64, 64) and ours.seed == 123


def test_sdxl_equals_a1111_over_diffusers_modules(sdxl, tiny_sdxl_dir):
    req = GenerationRequest("1girl, silver hair", negative_prompt="bad", sampler="Euler", steps=3, cfg_scale=5.0,
                            seed=7, rng="CPU", **SIZE)
    ours = sdxl(req)[0]
    ref = _diffusers_reference(StableDiffusionXLPipeline, tiny_sdxl_dir, "Euler", req.prompt, "bad", 3, 5.0, 7)
    assert np.abs(ours.array - ref).max() <= 1e-4


def test_clip_skip_matches_diffusers_convention(sd15, tiny_sd15_dir):
    """A1111 clip skip 2 = the penultimate CLIP layer followed by the final layer norm.

    The reference encodes by hand (diffusers 0.42's own `clip_skip` path breaks on transformers 5,
    which flattened `CLIPTextModel.text_model`) and hands the embeddings to the plain pipeline.
    """
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
    te = pipe.text_encoder
    norm = getattr(te, "text_model", te).final_layer_norm

    def embed(text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return norm(te(ids, output_hidden_states=True).hidden_states[-2])

    ref = a1111_images(pipe, "Euler", None, None, 2, 7.0, 1, prompt_embeds=embed("1girl"),
                       negative_embeds=embed(""), **SIZE)[0]
    ours = sd15(GenerationRequest("1girl", sampler="Euler", steps=2, seed=1, clip_skip=2, rng="CPU", **SIZE))[0]
    assert np.abs(ours.array - ref).max() <= 1e-4
    assert "Clip skip: 2" in ours.infotext
    no_skip = sd15(GenerationRequest("1girl", sampler="Euler", steps=2, seed=1, rng="CPU", **SIZE))[0]
    assert np.abs(no_skip.array - ref).max() > 1e-4


def test_batch_and_seed_sequence(sd15):
    base = GenerationRequest("1girl", sampler="Euler a", steps=3, seed=40, **SIZE)
    batch = sd15(GenerationRequest(**{**base.__dict__, "n": 3, "batch_size": 2}))
    assert [im.seed for im in batch] == [40, 41, 42]
    for im in batch:
        alone = sd15(GenerationRequest(**{**base.__dict__, "seed": im.seed}))[0]
        assert np.abs(alone.array - im.array).max() <= 1e-4
    assert np.abs(batch[0].array - batch[1].array).max() > 1e-3  # different seeds, different images


def test_emphasis_changes_the_image_and_neutral_weight_does_not(sd15):
    def run(prompt):
        return sd15(GenerationRequest(prompt, sampler="Euler", steps=2, seed=3, **SIZE))[0].array

    plain = run("1girl, red hair")
    assert np.abs(run("1girl, (red hair:1.0)") - plain).max() <= 1e-6
    assert np.abs(run("1girl, (red hair:1.6)") - plain).max() > 1e-4


def test_infotext_records_resolved_parameters(sd15):
    im = sd15(GenerationRequest("1girl", negative_prompt="bad hands", sampler="DPM++ 2M Karras", steps=2, seed=5,
                                cfg_scale=6.5, **SIZE))[0]
    # A1111 1.10's form of a pre-1.9 name: the sampler, then the schedule its get_sigmas records
    assert im.infotext.startswith("1girl\nNegative prompt: bad hands\n"
                                  "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, ")
    assert "CFG scale: 6.5, Seed: 5, Size: 64x64" in im.infotext
    assert f"Model hash: {sd15.model_hash}" in im.infotext and len(sd15.model_hash) == 10


def test_preset_fills_prompt_negative_and_defaults(sd15):
    from animegen.prompts.presets import build_prompt, get_preset

    preset = get_preset("dashanime")
    im = sd15(GenerationRequest("a girl with red hair", preset="dashanime", steps=1, seed=1, **SIZE))[0]
    assert im.infotext.startswith(build_prompt(preset, "a girl with red hair"))
    if preset.negative:
        assert f"Negative prompt: {preset.negative}" in im.infotext
    assert f"Sampler: {preset.sampler}" in im.infotext


def test_img2img_equals_a1111_and_hires_sizes(sd15, tiny_sd15_dir):
    from PIL import Image

    init = Image.new("RGB", (80, 48), (200, 30, 30))
    i2i = sd15(GenerationRequest("1girl", sampler="Euler", init_image=init, strength=0.5, steps=4, seed=2,
                                 rng="CPU", **SIZE))[0]
    assert i2i.image.size == (64, 64) and "Denoising strength: 0.5" in i2i.infotext
    ref_pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None,
                                                       requires_safety_checker=False)
    ref = a1111_images(ref_pipe, "Euler", "1girl", "", 4, 7.0, 2, init_image=init.resize((64, 64), Image.LANCZOS),
                       strength=0.5, **SIZE)[0]
    assert np.abs(i2i.array - ref).max() <= 1e-4
    hires = sd15(GenerationRequest("1girl", steps=2, seed=2, hires_scale=1.5, hires_steps=2, **SIZE))[0]
    assert hires.image.size == (96, 96) and "Hires upscale: 1.5" in hires.infotext


def test_progress_and_interrupt(sd15):
    seen = []
    sd15(GenerationRequest("1girl", steps=3, seed=1, n=2, batch_size=1, **SIZE),
         progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationInterrupted):
        sd15(GenerationRequest("1girl", steps=3, seed=1, **SIZE), interrupt=stop)
    # an interrupt during the first batch returns that batch (as A1111 does) and starts no other
    stop.clear()
    late = sd15(GenerationRequest("1girl", steps=3, seed=1, n=3, **SIZE), interrupt=stop,
                progress=lambda done, total: stop.set())
    assert [im.seed for im in late] == [1]


@pytest.mark.parametrize("field,value,message", [
    ("width", 100, "multiple of 8"), ("steps", 0, "steps"), ("sampler", "Euler b", "valid samplers"),
    ("preset", "nope", "nope"), ("strength", 0.0, "strength"),
])
def test_bad_requests_are_explained(sd15, field, value, message):
    req = GenerationRequest("1girl", steps=1, seed=1, **SIZE)
    setattr(req, field, value)
    with pytest.raises(ValueError, match=message):
        sd15(req)
