"""The hires fix as A1111 1.10's `StableDiffusionProcessingTxt2Img` runs it, against a reference written from it.

The reference (independent of `generate/hires.py`): the first pass is `pipeline_reference.a1111_images`; A1111's
latent upscalers are `torch.nn.functional.interpolate` with its `shared.latent_upscale_modes` table (below); its
pixel upscalers take the first pass as `astype(uint8)` pixels and resize with PIL as `images.resize_image` and
`upscaler.Upscaler.upscale` do; `calculate_target_resolution`'s cover-and-crop for "Hires resize" WxH; then the
second pass is img2img at the hires denoise with `setup_img2img_steps` given the steps (exactly the hires steps
run), fresh noise from the seed, and the hires sampler / prompt / negative / CFG.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pipeline_reference import a1111_images
from test_rng_request import _Recording
from typer.testing import CliRunner

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest
from animegen.generate.infotext import parse_infotext

# A1111 1.10 modules/shared.py: latent_upscale_modes
A1111_LATENT_MODES = {
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True), "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True), "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
TOL = 1e-4


@pytest.fixture(scope="module")
def sd15(sd15_engine):
    return sd15_engine


def target_size(width, height, scale, rx, ry):
    """A1111's calculate_target_resolution: (upscale-to width, height, truncate x, truncate y)."""
    if not rx and not ry:
        return int(width * scale), int(height * scale), 0, 0
    if not ry:
        return rx, rx * height // width, 0, 0
    if not rx:
        return ry * width // height, ry, 0, 0
    up = (rx, rx * height // width) if width / height < rx / ry else (ry * width // height, ry)
    return up[0], up[1], (up[0] - rx) // 8, (up[1] - ry) // 8


def pixel_upscale(image: Image.Image, w: int, h: int, upscaler: str) -> Image.Image:
    """A1111's resize_image(0, image, w, h, upscaler_name): Upscaler.upscale for Lanczos / Nearest, then Lanczos."""
    if upscaler != "None":
        scale = max(w / image.width, h / image.height)
        if scale > 1.0:
            dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
            method = Image.LANCZOS if upscaler == "Lanczos" else Image.NEAREST
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=method)
            if image.size != dest:
                image = image.resize(dest, resample=Image.LANCZOS)
    return image.resize((w, h), resample=Image.LANCZOS) if image.size != (w, h) else image


def reference(pipe, *, sampler="Euler", prompt="1girl", negative="lowres", steps=3, cfg=7.0, seed=11, width=64,
              height=64, scale=1.5, resize=(0, 0), upscaler="Latent", hr_steps=0, denoise=0.5, hr_sampler=None,
              hr_prompt="", hr_negative="", hr_cfg=None):
    first, latents = a1111_images(pipe, sampler, prompt, negative, steps, cfg, seed, width=width, height=height)
    w, h, tx, ty = target_size(width, height, scale, *resize)
    if upscaler in A1111_LATENT_MODES:
        mode, antialias = A1111_LATENT_MODES[upscaler]
        init = torch.nn.functional.interpolate(latents.to(torch.float32), size=(h // 8, w // 8), mode=mode,
                                               antialias=antialias)
        init = init[:, :, ty // 2:init.shape[2] - (ty + 1) // 2, tx // 2:init.shape[3] - (tx + 1) // 2]
        extra = {"init_latents": init}
    else:
        assert not (tx or ty)
        pixels = Image.fromarray((255.0 * first).astype(np.uint8))  # A1111's astype(np.uint8): truncation
        extra = {"init_image": pixel_upscale(pixels, w, h, upscaler)}
    out_h, out_w = h // 8 * 8 - ty * 8, w // 8 * 8 - tx * 8
    image, _ = a1111_images(pipe, hr_sampler or sampler, hr_prompt or prompt, hr_negative or negative,
                            hr_steps or steps, cfg if hr_cfg is None else hr_cfg, seed, width=out_w, height=out_h,
                            strength=denoise, fixed_steps=True, **extra)
    return image


def ours(gen, *, sampler="Euler", steps=3, cfg=7.0, seed=11, width=64, height=64, **hires):
    request = GenerationRequest("1girl", negative_prompt="lowres", sampler=sampler, steps=steps, cfg_scale=cfg,
                                seed=seed, width=width, height=height, rng="CPU", **hires)
    return gen(request)[0]


@pytest.mark.parametrize("upscaler", [*A1111_LATENT_MODES, "Lanczos", "Nearest", "None"])
def test_each_upscaler_matches_a1111(sd15, ref_pipe, one_torch_thread, upscaler):
    got = ours(sd15, hires_scale=1.5, hires_upscaler=upscaler)
    want = reference(ref_pipe, upscaler=upscaler)
    assert got.image.size == (96, 96) and np.abs(got.array - want).max() <= TOL
    assert parse_infotext(got.infotext)["Hires upscaler"] == upscaler


@pytest.mark.parametrize("width, height, resize", [(96, 64, (128, 128)), (64, 96, (96, 0)), (96, 64, (0, 96)),
                                                   (64, 64, (80, 112)), (72, 64, (96, 96))])
def test_hires_resize_covers_and_crops_as_a1111(sd15, ref_pipe, one_torch_thread, width, height, resize):
    got = ours(sd15, width=width, height=height, hires_resize_x=resize[0], hires_resize_y=resize[1])
    want = reference(ref_pipe, width=width, height=height, resize=resize)
    assert got.array.shape == want.shape and np.abs(got.array - want).max() <= TOL
    if resize[0] and resize[1]:
        assert got.image.size == resize
    assert parse_infotext(got.infotext)["Hires resize"] == f"{resize[0]}x{resize[1]}"


def test_hires_sampler_prompt_negative_and_cfg_are_the_second_passes(sd15, ref_pipe, one_torch_thread):
    hires = {"hires_sampler": "DPM++ 2M", "hires_prompt": "1girl, detailed", "hires_negative_prompt": "blurry",
             "hires_cfg_scale": 4.0, "hires_steps": 4, "hires_denoise": 0.6}
    got = ours(sd15, sampler="Euler a", hires_scale=1.25, hires_upscaler="Lanczos", **hires)
    want = reference(ref_pipe, sampler="Euler a", scale=1.25, upscaler="Lanczos", hr_sampler="DPM++ 2M",
                     hr_prompt="1girl, detailed", hr_negative="blurry", hr_cfg=4.0, hr_steps=4, denoise=0.6)
    assert np.abs(got.array - want).max() <= TOL
    p = parse_infotext(got.infotext)
    assert (p["Hires sampler"], p["Hires schedule type"], p["Hires prompt"]) == ("DPM++ 2M", "Karras",
                                                                                 "1girl, detailed")
    assert (p["Hires negative prompt"], p["Hires CFG Scale"], p["Hires steps"]) == ("blurry", "4", "4")


def test_hires_steps_run_exactly_whatever_the_denoise(sd15, one_torch_thread):
    """Issue #13: "Hires steps: 4" at denoise 0.5 ran 2 steps; A1111 runs 4 (its fixed-steps img2img rule)."""
    kp = sd15.sampling()
    calls, unet_fn = [], kp._unet_fn

    def counting(x, t, cond):
        calls.append(x.shape[-1])
        return unet_fn(x, t, cond)

    kp._unet_fn = counting
    try:
        for denoise in (0.5, 0.2, 0.9):
            calls.clear()
            ours(sd15, steps=3, hires_scale=1.5, hires_steps=4, hires_denoise=denoise)
            assert calls == [8] * 3 + [12] * 4  # Euler: one UNet batch per step, first pass then hires pass
    finally:
        del kp._unet_fn


@pytest.mark.parametrize("hires_steps, denoise", [(1, 0.05), (0, 0.01), (2, 0.999)])
def test_tiny_step_times_denoise_never_crashes(sd15, one_torch_thread, hires_steps, denoise):
    got = ours(sd15, steps=1, hires_scale=1.25, hires_steps=hires_steps, hires_denoise=denoise)
    assert got.image.size == (80, 80) and np.isfinite(got.array).all()


def test_scale_1_with_hires_on_runs_the_second_pass(sd15, ref_pipe, one_torch_thread):
    got = ours(sd15, hires=True, hires_upscaler="None")
    want = reference(ref_pipe, scale=1.0, upscaler="None")
    assert np.abs(got.array - want).max() <= TOL and "Hires upscale: 1" in got.infotext


def test_unknown_upscalers_are_refused_naming_the_field(sd15):
    """Model upscalers are found by name in the generator's upscaler_dir (tests/generate/test_hires_model_upscaler.py);
    this one has none, so these names are refused before sampling."""
    for name in ("R-ESRGAN 4x+", "4x-UltraSharp", "SwinIR_4x", "Bicubic"):
        with pytest.raises(AnimegenError, match="^hires_upscaler .*Latent.*Lanczos"):
            sd15(GenerationRequest("x", steps=1, width=64, height=64, hires_scale=2, hires_upscaler=name))
    assert GenerationRequest("x", hires_upscaler="latent (NEAREST-exact)").validate() is None


def test_a_hires_prompt_with_other_loras_is_refused(sd15):
    with pytest.raises(AnimegenError, match="hires_prompt"):
        ours(sd15, steps=1, hires_scale=1.25, hires_prompt="1girl <lora:style:0.5>")


# ---- the hires settings through the CLI and the API ------------------------------------------------------------

def test_the_cli_flags_reach_the_request(tmp_path, monkeypatch):
    import animegen.generate
    from animegen.cli.main import app

    seen = []  # the command's Generator, unloaded: it records the request it is handed
    monkeypatch.setitem(vars(animegen.generate), "Generator", lambda *a, **k: lambda req, **kw: seen.append(req) or [])
    r = CliRunner().invoke(app, [
        "generate", "1girl", "--model", "test/unused", "--out", str(tmp_path), "--hires-resize-x", "1024",
        "--hires-resize-y", "1536", "--hires-upscaler", "Latent (bicubic)", "--hires-sampler", "DPM++ 2M",
        "--hires-schedule-type", "Exponential", "--hires-prompt", "detailed", "--hires-negative-prompt", "blurry",
        "--hires-cfg-scale", "4.5", "--hires-steps", "12", "--hires-denoise", "0.4", "--schedule-type", "Karras"])
    assert r.exit_code == 0, r.output
    q = seen[0]
    assert (q.hires_resize_x, q.hires_resize_y, q.hires_upscaler, q.hires_sampler, q.hires_schedule_type) == (
        1024, 1536, "Latent (bicubic)", "DPM++ 2M", "Exponential")
    assert (q.hires_prompt, q.hires_negative_prompt, q.hires_cfg_scale, q.hires_steps, q.hires_denoise) == (
        "detailed", "blurry", 4.5, 12, 0.4)
    assert q.schedule_type == "Karras"
    r = CliRunner().invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                                 "--hires-upscaler", "R-ESRGAN 4x+"])
    assert r.exit_code == 2 and "hires_upscaler" in r.output and "Traceback" not in r.output


def test_the_api_takes_a1111s_hires_fields(tmp_path):
    from animegen.serve.app import create_app
    from animegen.serve.config import ServeConfig

    backend = _Recording()
    (tmp_path / "model").mkdir()
    app = create_app(ServeConfig(model=str(tmp_path / "model"), ui=False), backend=backend)
    body = {"prompt": "1girl", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.0,
            "hr_upscaler": "Latent (antialiased)", "hr_resize_x": 96, "hr_resize_y": 128, "hr_sampler_name": "Heun",
            "hr_scheduler": "Karras", "hr_prompt": "detailed", "hr_negative_prompt": "blurry", "hr_cfg": 3.0,
            "hr_second_pass_steps": 3, "denoising_strength": 0.4}
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "R-ESRGAN 4x+"})
        assert bad.status_code == 422 and any("hr_upscaler" in e["loc"] for e in bad.json()["detail"])
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_sampler_name": "Euler b"})
        assert bad.status_code == 422 and any("hr_sampler_name" in e["loc"] for e in bad.json()["detail"])
    (q,) = backend.requests
    assert q.hires and (q.hires_upscaler, q.hires_resize_x, q.hires_resize_y) == ("Latent (antialiased)", 96, 128)
    assert (q.hires_sampler, q.hires_schedule_type, q.hires_prompt, q.hires_negative_prompt) == (
        "Heun", "Karras", "detailed", "blurry")
    assert (q.hires_cfg_scale, q.hires_steps, q.hires_denoise) == (3.0, 3, 0.4)
