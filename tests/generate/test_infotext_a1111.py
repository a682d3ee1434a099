"""Infotext as A1111 1.10 reads and writes it: field by field, refusals, warnings, and the round trip.

References: A1111 1.10's `infotext_utils.parse_generation_parameters` (missing "Clip skip" = 1, "RNG" = GPU,
"Schedule type" = Automatic, "Hires sampler" = "Use same sampler", ...; `restore_old_hires_fix_params`),
`sd_samplers.get_sampler_and_scheduler` (a schedule suffix on the sampler name wins; Automatic = the sampler's
`scheduler` option: Karras for DPM++ 2M, Exponential for DPM++ 2M SDE), `processing.create_infotext` and
`StableDiffusionProcessingTxt2Img.init` (what is written, and when), Forge's "Hires CFG Scale" and its built-in
RescaleCFG script ("Rescale CFG", the ComfyUI formula on v-predictions). The texts below are written by hand in
A1111's format; nothing is taken from animegen's own output except in the round-trip tests.
"""

from __future__ import annotations

import logging
import math
import random

import a1111_reference as ref
import numpy as np
import pytest
import torch

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest, Generator
from animegen.generate.infotext import parse_infotext
from animegen.generate.request import request_from_infotext
from animegen.generate.samplers import resolve_sampler

BASE = "Steps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 965400086, Size: 512x768, Model hash: 45dee52b"


def read(fields: str = "", sampler: str = "Euler a", prompt: str = "1girl\nNegative prompt: lowres"):
    return request_from_infotext(f"{prompt}\n{BASE.format(sampler=sampler)}{', ' if fields else ''}{fields}")


def effective(request) -> tuple[str, str]:
    choice = resolve_sampler(request.sampler, request.schedule_type)
    return choice.sampler.name, choice.effective_schedule.label


# ---- reading ---------------------------------------------------------------------------------------------------

def test_missing_fields_mean_what_a1111_1_10_fills_in():
    r = read()
    assert (r.clip_skip, r.rng, r.eta_noise_seed_delta, r.emphasis, r.guidance_rescale) == (1, "GPU", 0, "Original", 0)
    assert not r.hires and r.hires_scale == 1.0 and r.subseed_strength == 0
    assert (r.prompt, r.negative_prompt, r.steps, r.cfg_scale, r.seed, r.width, r.height) == (
        "1girl", "lowres", 20, 7.0, 965400086, 512, 768)


@pytest.mark.parametrize("sampler, schedule", [
    ("DPM++ 2M", "Karras"), ("DPM++ 2M SDE", "Exponential"), ("DPM++ SDE", "Karras"), ("DPM2 a", "Karras"),
    ("DPM++ 3M SDE", "Exponential"), ("Euler a", "Uniform"), ("Euler", "Uniform"), ("Restart", "Karras"),
])
def test_no_schedule_type_is_the_samplers_automatic(sampler, schedule):
    assert effective(read(sampler=sampler)) == (sampler, schedule)


@pytest.mark.parametrize("label", ref.SCHEDULES[1:])
def test_every_a1111_schedule_type_name_is_read(label):
    assert effective(read(f"Schedule type: {label}", sampler="Euler")) == ("Euler", label)
    assert effective(read(f"Schedule type: {label}", sampler="DPM++ 2M")) == ("DPM++ 2M", label)


@pytest.mark.parametrize("name, want", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")), ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ 2M SDE Karras", ("DPM++ 2M SDE", "Karras")), ("LMS Karras", ("LMS", "Karras")),
    ("k_euler_a", ("Euler a", "Uniform")), ("k_dpmpp_2m", ("DPM++ 2M", "Karras")), ("k_lms", ("LMS", "Uniform")),
])
def test_legacy_names_and_aliases_are_read(name, want):
    assert effective(read(sampler=name)) == want


def test_a_schedule_suffix_on_the_name_wins_over_schedule_type():  # get_sampler_and_scheduler's loop
    assert effective(read("Schedule type: Uniform", sampler="DPM++ 2M Karras")) == ("DPM++ 2M", "Karras")


def test_a_pre_1_9_bare_name_is_read_as_1_10_reads_it_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert effective(read("Version: v1.6.0", sampler="DPM++ 2M")) == ("DPM++ 2M", "Karras")
    assert "Uniform" in caplog.text and "v1.6.0" in caplog.text


def test_hires_fields_are_read():
    r = read('Denoising strength: 0.45, Hires resize: 1024x1536, Hires steps: 12, Hires upscaler: '
             '"Latent (bicubic antialiased)", Hires sampler: DPM++ 2M SDE, Hires schedule type: Karras, '
             'Hires prompt: "1girl, detailed", Hires negative prompt: worst quality, Hires CFG Scale: 4.5')
    assert r.hires and (r.hires_resize_x, r.hires_resize_y, r.hires_steps, r.hires_denoise) == (1024, 1536, 12, 0.45)
    assert (r.hires_upscaler, r.hires_prompt, r.hires_negative_prompt, r.hires_cfg_scale) == (
        "Latent (bicubic antialiased)", "1girl, detailed", "worst quality", 4.5)
    hires = resolve_sampler(r.hires_sampler, r.hires_schedule_type)
    assert (hires.sampler.name, hires.effective_schedule.label) == ("DPM++ 2M SDE", "Karras")


def test_hires_defaults_latent_upscaler_and_the_first_pass_sampler():
    r = read("Denoising strength: 0.7, Hires upscale: 2", sampler="DPM++ 2M Karras")
    assert r.hires and r.hires_scale == 2 and r.hires_upscaler == "Latent" and r.hires_sampler is None
    assert (r.hires_prompt, r.hires_negative_prompt, r.hires_cfg_scale) == ("", "", None)
    r = read("Denoising strength: 0.5, Hires upscale: 1, Hires sampler: Use same sampler, "
             "Hires schedule type: Use same scheduler")  # scale 1 still runs the second pass in A1111
    assert r.hires and r.hires_sampler is None and r.hires_schedule_type is None


def test_hires_schedule_type_alone_applies_to_the_first_pass_sampler():
    r = read("Schedule type: Karras, Denoising strength: 0.5, Hires upscale: 1.5, Hires schedule type: Exponential",
             sampler="Euler")
    hires = resolve_sampler(r.hires_sampler, r.hires_schedule_type)
    assert (hires.sampler.name, hires.effective_schedule.label) == ("Euler", "Exponential")


def test_denoising_strength_without_hires_is_img2img_strength():
    r = read("Denoising strength: 0.35")
    assert not r.hires and r.strength == 0.35


def test_the_pre_1_0_hires_fix_becomes_size_plus_resize():
    r = read("Denoising strength: 0.7, First pass size: 0x0")  # 512x768 final, first pass from 512*512 pixels
    scale = math.sqrt(512 * 512 / (512 * 768))
    assert (r.width, r.height) == (math.ceil(scale * 512 / 64) * 64, math.ceil(scale * 768 / 64) * 64)
    assert (r.hires_resize_x, r.hires_resize_y) == (512, 768) and r.hires


def test_noise_emphasis_variation_rescale_and_clip_skip_are_read():
    r = read("Clip skip: 2, ENSD: 31337, RNG: NV, Emphasis: No norm, Variation seed: 77, "
             "Variation seed strength: 0.3, Rescale CFG: 0.7")
    assert (r.clip_skip, r.eta_noise_seed_delta, r.rng, r.emphasis) == (2, 31337, "NV", "No norm")
    assert (r.subseed, r.subseed_strength, r.guidance_rescale) == (77, 0.3, 0.7)


def test_hypernet_becomes_the_tag_a1111_makes_of_it():
    assert read("Hypernet: anime, Hypernet strength: 0.5").prompt == "1girl<hypernet:anime:0.5>"


@pytest.mark.parametrize("field", [
    "Hires checkpoint: other", "Refiner: sdxl_refiner", "Seed resize from: 512x512", "Tiling: True",
    "Face restoration: CodeFormer", "Image CFG scale: 1.5", "Conditional mask weight: 0.5", "Token merging ratio: 0.5",
    "SGM noise multiplier: True", "Schedule rho: 5", "Eta: 0.8", "Sigma churn: 0.2", "NGMS: 1",
    "Skip Early CFG: 0.1", "VAE Decoder: TAESD", "CFG Rescale: 0.7", "Discard penultimate sigma: True",
    "Distilled CFG Scale: 3.5",
])
def test_what_animegen_cannot_reproduce_is_refused_naming_the_field(field):
    name = field.split(":")[0]
    with pytest.raises(AnimegenError, match=f"^infotext {name}: "):
        read(field)


@pytest.mark.parametrize("field", ["VAE Decoder: Full", "Hires checkpoint: Use same checkpoint", "CFG Rescale: 0",
                                   "Schedule rho: 0"])
def test_a_refusable_field_at_its_default_is_fine(field):
    read(field)


@pytest.mark.parametrize("field, bad", [("Sampler", "Euler b"), ("Hires upscaler", " "),
                                        ("Emphasis", "Loud"), ("Steps", "many"), ("Schedule type", "Fancy")])
def test_bad_values_are_refused_naming_the_field(field, bad):
    text = f"1girl\n{BASE.format(sampler='Euler')}, Hires upscale: 2, {field}: {bad}"
    if field == "Sampler":
        text = f"1girl\n{BASE.format(sampler=bad)}"
    with pytest.raises(ValueError, match=f"{field}"):
        request_from_infotext(text)


@pytest.mark.parametrize("field", ["FP8 weight: Enable", "Downcast alphas_cumprod: True", "Pad conds: True",
                                   "Noise schedule: Zero Terminal SNR",
                                   "Dynamic thresholding enabled: True"])  # ADetailer is read (test_detailer)
def test_ignored_fields_warn(caplog, field):
    with caplog.at_level(logging.WARNING):
        read(field)
    assert field.split(":")[0] in caplog.text


# ---- writing and the round trip (engine on the tiny model) ------------------------------------------------------

@pytest.fixture(scope="module")
def sd15(sd15_engine):
    return sd15_engine


def test_sampler_and_schedule_type_are_written_as_a1111_1_10_writes_them(sd15, one_torch_thread):
    def written(sampler, schedule=None):
        im = sd15(GenerationRequest("1girl", sampler=sampler, schedule_type=schedule, steps=1, seed=1,
                                    width=64, height=64))[0]
        p = parse_infotext(im.infotext)
        return p["Sampler"], p.get("Schedule type")

    assert written("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")  # get_sigmas records the effective schedule
    assert written("dpmpp_2m_sde") == ("DPM++ 2M SDE", "Exponential")
    assert written("euler_a") == ("Euler a", "Automatic")  # the model's own sigmas: p.scheduler, Automatic
    assert written("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert written("DDIM", "Karras") == ("DDIM", "Karras")


def _random_request(case: int) -> GenerationRequest:
    rnd = random.Random(case)
    samplers = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE Karras", "k_dpm_2_a", "LMS", "Heun",
                "DDIM", "UniPC", "LCM", "Restart", "DPM++ 2S a", "DPM2"]
    fields = {
        "prompt": rnd.choice(["1girl", "1girl, (red hair:1.2), smile", "a, b: c\nsecond line"]),
        "negative_prompt": rnd.choice(["", "lowres, bad anatomy"]), "sampler": rnd.choice(samplers),
        "schedule_type": rnd.choice([None, *rnd.sample(ref.SCHEDULES, 2)]), "steps": rnd.randint(1, 2),
        "cfg_scale": rnd.choice([1.0, 5.5, 7.0]), "seed": rnd.randrange(2**32), "width": 64,
        "height": rnd.choice([64, 72]),
        "clip_skip": rnd.choice([1, 2]), "rng": rnd.choice(["GPU", "CPU", "NV"]),
        "eta_noise_seed_delta": rnd.choice([0, 31337]), "guidance_rescale": rnd.choice([0.0, 0.7]),
        "emphasis": rnd.choice(["Original", "No norm", "Ignore"]), "subseed": rnd.randrange(100),
        "subseed_strength": rnd.choice([0.0, 0.25]),
    }
    if case % 3:  # two cases in three run the hires fix, cycling through the resize forms
        resize = [(0, 0), (96, 0), (0, 80), (88, 96)][case % 4]
        fields.update(hires=True, hires_scale=rnd.choice([1.0, 1.25]), hires_resize_x=resize[0],
                      hires_resize_y=resize[1], hires_steps=rnd.choice([0, 1, 2]),
                      hires_denoise=rnd.choice([0.3, 0.55]), hires_upscaler=rnd.choice(
                          ["Latent", "Latent (nearest-exact)", "Lanczos", "None", "Nearest"]),
                      hires_sampler=rnd.choice([None, *rnd.sample(samplers, 2)]),
                      hires_schedule_type=rnd.choice([None, "Karras", "Automatic"]),
                      hires_prompt=rnd.choice(["", "1girl, detailed"]),
                      hires_negative_prompt=rnd.choice(["", "blurry"]), hires_cfg_scale=rnd.choice([None, 4.0]))
    return GenerationRequest(**fields)


@pytest.mark.parametrize("case", range(20))
def test_every_written_field_reads_back_to_the_same_image(sd15, one_torch_thread, case):
    request = _random_request(case)
    first = sd15(request)[0]
    again = sd15(request_from_infotext(first.infotext))[0]
    assert again.infotext == first.infotext
    assert np.array_equal(again.array, first.array)


def test_the_round_trip_covers_what_it_claims():
    """The random requests above do exercise the fields (so the round trip is not vacuous)."""
    requests = [_random_request(case) for case in range(20)]
    assert sum(r.hires for r in requests) >= 5 and any(r.hires_resize_x and r.hires_resize_y for r in requests)
    assert {r.rng for r in requests} == {"GPU", "CPU", "NV"} and any(r.guidance_rescale for r in requests)
    assert any(r.hires_sampler for r in requests) and any(r.subseed_strength for r in requests)


# ---- Rescale CFG ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vpred_pipe():
    from diffusers import EulerDiscreteScheduler

    from animegen.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe


def forge_rescaled_denoiser(phi):
    """`a1111_reference.denoiser` with Forge's RescaleCFG (ComfyUI's formula): CFG and the std rescale on the
    v-predictions computed from the denoised images, then back to a denoised image."""
    plain = ref.denoiser

    def make(model_fn, m, cond, uncond, cfg, v=False):
        d_cond, d_uncond = plain(model_fn, m, cond, uncond, 1.0, v), plain(model_fn, m, cond, uncond, 0.0, v)

        def d(x, sigma):
            s = float(sigma)
            to_v = lambda den: (x / (s * s + 1) - den) * math.sqrt(s * s + 1) / s
            v_c, v_u = to_v(d_cond(x, sigma)), to_v(d_uncond(x, sigma))
            v_cfg = v_u + cfg * (v_c - v_u)
            ratio = torch.std(v_c, dim=(1, 2, 3), keepdim=True) / torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
            v_final = phi * v_cfg * ratio + (1 - phi) * v_cfg
            return x / (s * s + 1) - v_final * s / math.sqrt(s * s + 1)
        return d
    return make


def test_rescale_cfg_is_forges_on_a_v_prediction_model(vpred_pipe, monkeypatch, one_torch_thread):
    from pipeline_reference import a1111_images

    gen = Generator(pipe=vpred_pipe, model_name="vpred")
    request = GenerationRequest("1girl", negative_prompt="bad", sampler="Euler", steps=4, seed=3, cfg_scale=9.0,
                                width=64, height=64, rng="CPU", guidance_rescale=0.7)
    ours = gen(request)[0]
    assert parse_infotext(ours.infotext)["Rescale CFG"] == "0.7"
    plain = gen(GenerationRequest(**{**request.__dict__, "guidance_rescale": 0.0}))[0]
    assert "Rescale CFG" not in parse_infotext(plain.infotext)
    monkeypatch.setattr(ref, "denoiser", forge_rescaled_denoiser(0.7))
    want, _ = a1111_images(vpred_pipe, "Euler", "1girl", "bad", 4, 9.0, 3, width=64, height=64)
    assert np.abs(ours.array - want).max() <= 1e-4
    assert np.abs(plain.array - want).max() > 1e-3  # the rescale does change this image


# ---- the front ends: --from-png overrides, Rescale CFG and Emphasis by name -------------------------------------

def test_from_png_applies_the_command_lines_settings_and_says_which(tiny_sd15_dir, tmp_path):
    from typer.testing import CliRunner

    from animegen.cli.main import app
    from animegen.generate.infotext import read_png_infotext

    runner, first = CliRunner(), tmp_path / "first"
    base = ["--model", str(tiny_sd15_dir), "--device", "cpu", "--layout", "flat", "--width", "64", "--height", "64"]
    r = runner.invoke(app, ["generate", "1girl", *base, "--steps", "1", "--seed", "5", "--out", str(first)])
    assert r.exit_code == 0, r.output
    png = first / "00000-5.png"
    r = runner.invoke(app, ["generate", "2girls", "--from-png", str(png), *base[:6], "--seed", "9", "--steps", "2",
                            "--guidance-rescale", "0.5", "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    assert "overriding" in r.output and "seed=9" in r.output and "steps=2" in r.output and "'2girls'" in r.output
    p = parse_infotext(read_png_infotext(tmp_path / "again" / "00000-9.png"))
    assert (p["Prompt"], p["Seed"], p["Steps"], p["Rescale CFG"], p["Size"]) == ("2girls", "9", "2", "0.5", "64x64")
    r = runner.invoke(app, ["generate", "--from-png", str(png), *base[:6], "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0 and "overriding" not in r.output
    assert read_png_infotext(tmp_path / "plain" / "00000-5.png") == read_png_infotext(png)


def test_the_api_and_cli_take_guidance_rescale_and_emphasis_by_name(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from test_rng_request import _Recording
    from typer.testing import CliRunner

    import animegen.generate
    from animegen.cli.main import app
    from animegen.serve.app import create_app
    from animegen.serve.config import ServeConfig

    seen = []
    monkeypatch.setitem(vars(animegen.generate), "Generator", lambda *a, **k: lambda req, **kw: seen.append(req) or [])
    r = CliRunner().invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                                 "--guidance-rescale", "0.7", "--emphasis", "No norm", "--subseed", "4",
                                 "--subseed-strength", "0.2"])
    assert r.exit_code == 0, r.output
    assert (seen[0].guidance_rescale, seen[0].emphasis, seen[0].subseed, seen[0].subseed_strength) == (
        0.7, "No norm", 4, 0.2)
    backend = _Recording()
    (tmp_path / "model").mkdir()
    api = create_app(ServeConfig(model=str(tmp_path / "model"), ui=False), backend=backend)
    body = {"prompt": "1girl", "steps": 1, "width": 64, "height": 64}
    with TestClient(api) as client:
        assert client.post("/sdapi/v1/txt2img", json={**body, "guidance_rescale": 0.7, "emphasis": "Ignore",
                                                      "subseed": 3, "subseed_strength": 0.5}).status_code == 200
        assert client.post("/sdapi/v1/txt2img",
                           json={**body, "override_settings": {"emphasis": "No norm"}}).status_code == 200
        assert client.post("/sdapi/v1/txt2img", json={**body, "guidance_rescale": 1.5}).status_code == 422
        bad = client.post("/sdapi/v1/txt2img", json={**body, "emphasis": "Loud"})
        assert bad.status_code == 422 and any("emphasis" in e["loc"] for e in bad.json()["detail"])
    first, second = backend.requests
    assert (first.guidance_rescale, first.emphasis, first.subseed, first.subseed_strength) == (0.7, "Ignore", 3, 0.5)
    assert second.emphasis == "No norm" and second.guidance_rescale == 0
