"""Inpainting and outpainting as A1111 1.10 (issue #15): the mask maths against hand-computed values, and the
engine on the tiny SD1.5 (pixels outside the mask kept, each masked-content mode's first latent, 9 channels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.generate import GenerationRequest, Generator
from animegen.generate.inpaint import (
    binary_mask,
    blur_mask,
    crop_region,
    expand_crop_region,
    fill_masked,
    inpainting_fill_name,
    outpaint_canvas,
    plan_inpaint,
)
from animegen.generate.request import request_from_infotext
from animegen.generate.rng import ImageRNG

STEPS = {"steps": 4, "cfg_scale": 7.0, "seed": 11, "sampler": "Euler", "strength": 0.9}


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(width: int, height: int, box: tuple[int, int, int, int], *, white_box: bool = True) -> Image.Image:
    x1, y1, x2, y2 = box
    values = np.zeros((height, width), dtype=np.uint8)
    values[y1:y2, x1:x2] = 255
    return Image.fromarray(values if white_box else 255 - values, "L")


# ---- the mask maths -------------------------------------------------------------------------------------------
def test_crop_region_pads_the_masks_box_and_expand_grows_it_to_the_processing_aspect():
    mask = box_mask(64, 64, (10, 30, 20, 34))
    assert crop_region(mask) == (10, 30, 20, 34)
    assert crop_region(mask, 4) == (6, 26, 24, 38)  # 18 x 12
    # to 2:1 the width must become 24: 6 more, 3 on each side
    assert expand_crop_region((6, 26, 24, 38), 64, 32, 64, 64) == (3, 26, 27, 38)
    # a thin box at the left edge, to 1:1: width 40 wanted, 18 to the left is outside so it all goes right
    assert expand_crop_region((0, 0, 4, 40), 64, 64, 64, 64) == (0, 0, 40, 40)
    assert crop_region(box_mask(16, 16, (0, 0, 0, 0))) is None


def test_binary_mask_thresholds_and_reads_alpha_where_the_mask_is_transparent():
    gray = Image.fromarray(np.array([[0, 128, 129, 255]], dtype=np.uint8), "L")
    assert np.asarray(binary_mask(gray)).tolist() == [[0, 0, 255, 255]]
    assert np.asarray(binary_mask(gray, invert=True)).tolist() == [[255, 255, 0, 0]]
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1, 3] = 255  # black pixels; only the second is opaque: the alpha is the mask
    assert np.asarray(binary_mask(Image.fromarray(rgba, "RGBA"))).tolist() == [[0, 255]]


def test_mask_blur_is_a_gaussian_of_sigma_blur_with_a1111s_kernel_width():
    sigma = 2.0
    line = np.zeros((1, 41), dtype=np.uint8)
    line[0, 20] = 255
    blurred = np.asarray(blur_mask(Image.fromarray(line, "L"), sigma, 0)).astype(int)[0]
    size = 2 * int(2.5 * sigma + 0.5) + 1  # 11 taps: nothing beyond 5 pixels
    d = np.arange(-(size // 2), size // 2 + 1)
    taps = np.exp(-d ** 2 / (2 * sigma ** 2))
    expected = np.zeros(41, dtype=int)
    expected[20 - size // 2:20 + size // 2 + 1] = np.rint(255 * taps / taps.sum())
    assert blurred.tolist() == expected.tolist()
    square = box_mask(40, 40, (15, 15, 25, 25))  # sigma 4: 21 taps, nothing reaches beyond 10 pixels
    out = np.asarray(blur_mask(square, 4)).astype(int)
    assert (out[:, :5] == 0).all() and (out[:5, :] == 0).all() and 0 < out[20, 15] < 255 and out[20, 20] > 128


def test_fill_keeps_unmasked_pixels_and_paints_the_hole_with_the_colours_around_it():
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :32] = (200, 30, 30)
    image[:, 32:] = (30, 30, 200)
    mask = box_mask(64, 32, (8, 8, 20, 24))
    filled = np.asarray(fill_masked(Image.fromarray(image), mask)).astype(int)
    keep = np.asarray(mask) == 0
    assert (filled[keep] == image[keep]).all()
    hole = filled[8:24, 8:20]
    assert (hole[..., 0] > hole[..., 2]).all()  # red surroundings, not the blue half


def test_outpaint_canvas_puts_the_image_on_a_bigger_canvas_and_masks_the_new_border():
    image = noise_image(16, 8)
    canvas, mask = outpaint_canvas(image, left=4, right=8, top=0, bottom=2)
    assert canvas.size == (28, 10) and mask.size == (28, 10)
    pixels, m = np.asarray(canvas), np.asarray(mask)
    assert (pixels[0:8, 4:20] == np.asarray(image)).all()
    assert (m[0:8, 4:20] == 0).all() and (m[:, :4] == 255).all() and (m[8:, :] == 255).all()
    assert (pixels[0:8, 0] == np.asarray(image)[:, 0]).all()  # edge pixels repeated
    red, _ = outpaint_canvas(image, top=2, fill=(255, 0, 0))
    assert (np.asarray(red)[:2] == (255, 0, 0)).all()
    with pytest.raises(Exception, match="at least one > 0"):
        outpaint_canvas(image)


def test_masked_content_takes_a1111s_names_and_numbers():
    assert [inpainting_fill_name(i) for i in range(4)] == ["fill", "original", "latent noise", "latent nothing"]
    assert inpainting_fill_name("Latent Noise") == "latent noise"
    with pytest.raises(Exception, match="0 or 'fill'"):
        inpainting_fill_name(4)


def test_a_mask_needs_an_init_image_and_a_valid_mode():
    with pytest.raises(ValueError, match="mask needs an init_image"):
        GenerationRequest("x", mask=box_mask(64, 64, (0, 0, 8, 8))).validate()
    with pytest.raises(ValueError, match="inpainting_fill"):
        GenerationRequest("x", inpainting_fill="blur").validate()  # type: ignore[arg-type]


# ---- the engine -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_sd15_dir):
    return Generator(tiny_sd15_dir, device="cpu")


def _record_img2img(monkeypatch, generator) -> list[dict]:
    """Observe what the engine hands the sampler (calling through to the real one)."""
    kp, seen = generator.sampling(), []
    real = kp.img2img

    def img2img(choice, conditioning, seeds, init, **kw):
        seen.append({"init": init.clone(), **kw})
        return real(choice, conditioning, seeds, init, **kw)
    monkeypatch.setattr(kp, "img2img", img2img)
    return seen


def test_pixels_outside_the_blurred_mask_are_the_init_images_exactly(engine):
    init, mask = noise_image(64, 64, 1), box_mask(64, 64, (16, 16, 48, 48))
    out = np.asarray(engine(GenerationRequest("1girl", init_image=init, mask=mask, mask_blur=4, width=64,
                                              height=64, **STEPS))[0].image).astype(int)
    kept = np.ones((64, 64), bool)
    kept[16 - 10:48 + 10, 16 - 10:48 + 10] = False  # the blur's reach: 2 * int(2.5 * 4 + 0.5) + 1 = 21 taps
    assert (out[kept] == np.asarray(init)[kept]).all()
    assert np.abs(out[24:40, 24:40] - np.asarray(init)[24:40, 24:40]).mean() > 10  # the inside was regenerated


def test_an_all_black_mask_gives_back_the_init_image(engine):
    init = noise_image(64, 64, 2)
    out = engine(GenerationRequest("1girl", init_image=init, mask=Image.new("L", (64, 64)), width=64, height=64,
                                   **STEPS))[0]
    assert (np.asarray(out.image) == np.asarray(init)).all()


def test_inverting_the_mask_keeps_the_white_part(engine):
    init, mask = noise_image(64, 64, 3), box_mask(64, 64, (16, 16, 48, 48))
    out = np.asarray(engine(GenerationRequest("1girl", init_image=init, mask=mask, inpainting_mask_invert=True,
                                              mask_blur=0, width=64, height=64, **STEPS))[0].image).astype(int)
    assert (out[16:48, 16:48] == np.asarray(init)[16:48, 16:48]).all()
    assert np.abs(out[:8] - np.asarray(init)[:8]).mean() > 10


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_the_latent_blend_keeps_the_init_latents_outside_the_mask(engine, sampler):
    """No paste-back: the sampler's own result equals the init latents where the latent mask is 0, and every
    denoised prediction the sigma samplers see is blended."""
    from animegen.generate.conditioning import PromptConditioning
    from animegen.generate.samplers import resolve_sampler

    kp = engine.sampling()
    init = kp.encode([noise_image(64, 64, 4)])
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    cond = PromptConditioning(engine.pipe, "1girl", "", 1, "Original", engine.embeddings)
    denoised = []
    out = kp.img2img(resolve_sampler(sampler), cond, [5], init, steps=4, strength=0.8, cfg_scale=7.0,
                     latent_mask=mask, callback=lambda info: denoised.append(info["denoised"]))
    keep = (mask == 0).expand_as(init)
    assert torch.equal(out[keep], init[keep])
    assert (out[~keep] - init[~keep]).abs().mean() > 0.05
    if sampler == "Euler a":
        assert denoised and all(torch.allclose(d[keep], init[keep]) for d in denoised)


@pytest.mark.parametrize("fill", ["original", "fill", "latent noise", "latent nothing"])
def test_each_masked_content_modes_first_latent(engine, monkeypatch, fill):
    init, mask = noise_image(64, 64, 5), box_mask(64, 64, (16, 16, 48, 48))
    seen = _record_img2img(monkeypatch, engine)
    engine(GenerationRequest("1girl", init_image=init, mask=mask, inpainting_fill=fill, width=64, height=64,
                             rng="CPU", **STEPS))
    kp, first = engine.sampling(), seen[0]["init"]
    m = seen[0]["latent_mask"].expand_as(first).bool()
    plan = plan_inpaint(init, mask, width=64, height=64, inpainting_fill=fill)
    resized = init.resize((64, 64), Image.LANCZOS)
    encoded = kp.encode([resized])
    filled = kp.encode([fill_masked(resized, plan.mask)])  # A1111 fills the image for every mode but original
    if fill == "original":
        assert torch.equal(first, encoded)
    elif fill == "fill":
        assert torch.equal(first, filled) and not torch.allclose(first, encoded)
    elif fill == "latent noise":
        noise = ImageRNG([STEPS["seed"]], source="CPU").first_noise(tuple(first.shape))
        assert torch.equal(first[m], noise.to(first)[m]) and torch.equal(first[~m], filled[~m])
    else:
        assert (first[m] == 0).all() and torch.equal(first[~m], filled[~m])
    assert m.any() and (~m).any()


def test_only_masked_samples_the_expanded_box_and_pastes_it_back_at_the_images_size(engine, monkeypatch):
    init, mask = noise_image(96, 64, 6), box_mask(96, 64, (40, 20, 56, 36))  # 16 x 16 white box
    seen = _record_img2img(monkeypatch, engine)
    result = engine(GenerationRequest("1girl", init_image=init, mask=mask, inpaint_full_res=True,
                                      inpaint_full_res_padding=8, mask_blur=0, width=64, height=64, **STEPS))[0]
    plan = plan_inpaint(init, mask, width=64, height=64, inpaint_full_res=True, inpaint_full_res_padding=8,
                        mask_blur=0)
    assert plan.crop == (32, 12, 64, 44)  # the box (40, 20, 56, 36) padded by 8: 32 x 32, already 1:1
    assert tuple(seen[0]["init"].shape[-2:]) == (8, 8)  # sampled at width x height, not at the image's size
    out, original = np.asarray(result.image).astype(int), np.asarray(init).astype(int)
    assert result.image.size == (96, 64)
    outside = np.ones((64, 96), bool)
    outside[20:36, 40:56] = False
    assert (out[outside] == original[outside]).all()
    assert np.abs(out[~outside] - original[~outside]).mean() > 10
    params = result.parameters
    assert (params["Inpaint area"], params["Masked area padding"], params["Size"]) == ("Only masked", 8, "64x64")


def test_the_inpainting_infotext_reads_back_to_the_same_settings(engine):
    init, mask = noise_image(64, 64, 7), box_mask(64, 64, (8, 8, 40, 40))
    result = engine(GenerationRequest("1girl", init_image=init, mask=mask, mask_blur=2, inpainting_fill="latent noise",
                                      inpaint_full_res=True, inpaint_full_res_padding=8, inpainting_mask_invert=True,
                                      width=64, height=64, **STEPS))[0]
    for text in ("Mask blur: 2", "Mask mode: Inpaint not masked", "Inpaint area: Only masked",
                 "Masked area padding: 8", "Masked content: latent noise", "Denoising strength: 0.9"):
        assert text in result.infotext
    back = request_from_infotext(result.infotext)
    assert (back.mask_blur, back.inpainting_fill, back.inpaint_full_res, back.inpaint_full_res_padding,
            back.inpainting_mask_invert, back.strength) == (2, "latent noise", True, 8, True, 0.9)
    plain = request_from_infotext("x\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Mask blur: 4")
    assert (plain.mask_blur, plain.inpainting_fill, plain.inpaint_full_res) == (4, "original", False)


# ---- 9-channel inpainting models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inpainting_engine():
    from animegen.models.tiny import build_tiny_pipeline

    return Generator(pipe=build_tiny_pipeline("sd15", inpainting=True), model_name="tiny-inpainting")


def _unet_inputs(monkeypatch, generator) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    handle = generator.pipe.unet.conv_in.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    monkeypatch.setattr(generator, "_hook", handle, raising=False)
    return inputs


def test_a_9_channel_unet_gets_the_mask_and_the_masked_image_latents(inpainting_engine, monkeypatch):
    from animegen.generate.inpaint import conditioning_mask

    gen = inpainting_engine
    init, mask = noise_image(64, 64, 8), box_mask(64, 64, (16, 16, 48, 48))
    inputs = _unet_inputs(monkeypatch, gen)
    try:
        result = gen(GenerationRequest("1girl", init_image=init, mask=mask, mask_blur=0, width=64, height=64,
                                       **STEPS))[0]
    finally:
        gen._hook.remove()
    x = inputs[0]
    assert x.shape[1] == 9
    plan = plan_inpaint(init, mask, width=64, height=64, mask_blur=0)
    cmask = torch.from_numpy(conditioning_mask(plan.mask, 64, 64))[None, None]
    expected_mask = torch.nn.functional.interpolate(cmask, size=(8, 8))
    pixels = torch.from_numpy(np.asarray(plan.image, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    kp = gen.sampling()
    assert torch.equal(x[:, 4:5], expected_mask.expand(x.shape[0], -1, -1, -1))
    assert torch.allclose(x[:, 5:], kp._encode_pixels(pixels * (1 - cmask)).expand(x.shape[0], -1, -1, -1))
    assert "Conditional mask weight: 1.0" in result.infotext


def test_a_9_channel_unet_without_a_mask_is_conditioned_on_a_full_mask_over_gray(inpainting_engine, monkeypatch):
    gen = inpainting_engine
    inputs = _unet_inputs(monkeypatch, gen)
    try:
        gen(GenerationRequest("1girl", width=64, height=64, steps=2, seed=1))
    finally:
        gen._hook.remove()
    x = inputs[0]
    assert x.shape[1] == 9 and (x[:, 4] == 1).all()
    gray = gen.sampling()._encode_pixels(torch.zeros(1, 3, 64, 64))
    assert torch.allclose(x[:, 5:], gray.expand(x.shape[0], -1, -1, -1))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_9_channel_single_files_are_detected_and_load_as_inpainting_unets(tmp_path, arch):
    from safetensors.torch import load_file

    from animegen.models.detect import detect_architecture, is_inpainting_unet
    from animegen.models.single_file import load_single_file
    from animegen.models.tiny import save_tiny_model

    written = save_tiny_model(arch, out=tmp_path / "folder", single_file=tmp_path / "m.safetensors",
                              inpainting=True)
    assert detect_architecture(load_file(written["single_file"])).is_inpainting
    assert is_inpainting_unet(load_single_file(written["single_file"]).unet)
    assert Generator(written["folder"], device="cpu").sampling().inpainting  # the diffusers folder too


def test_a_diffusers_inpainting_folder_loads_as_its_9_channel_model(tmp_path):
    import json

    from animegen.models.tiny import save_tiny_model

    folder = save_tiny_model("sd15", out=tmp_path / "inpaint", inpainting=True)["folder"]
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    gen = Generator(folder, device="cpu")
    assert gen.sampling().inpainting
    init = noise_image(64, 64, 9)
    out = gen(GenerationRequest("1girl", init_image=init, mask=Image.new("L", (64, 64)), width=64, height=64,
                                **STEPS))[0]
    assert (np.asarray(out.image) == np.asarray(init)).all()
