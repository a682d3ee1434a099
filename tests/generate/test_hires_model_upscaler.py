"""The hires fix with a model upscaler (issue #15), as A1111 1.10 runs a non-latent upscaler: decode the first
pass, upscale it with the network (`Upscaler.upscale`), Lanczos to the target, encode, second pass.

The reference is `pipeline_reference.a1111_images` (A1111's sampling, independent of the engine) for both passes,
with the model step done by `models.upscalers.upscale_image` (tested against forwards written from the papers in
tests/models/test_upscalers.py). The weights are a tiny random RRDBNet saved as .safetensors.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pipeline_reference import a1111_images
from typer.testing import CliRunner

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest, Generator
from animegen.generate.infotext import parse_infotext
from animegen.models.upscalers import list_upscalers, upscale_image

TOL = 1e-4



@pytest.fixture(scope="module")
def folder(tmp_path_factory, save_tiny_upscaler):
    root, save_rrdb = tmp_path_factory.mktemp("upscalers"), save_tiny_upscaler
    save_rrdb(root / "4x-tiny.safetensors")
    save_rrdb(root / "sub" / "2x-tiny.safetensors", seed=1, upsamples=1)
    save_rrdb(root / "pickled.pth", seed=2)
    return root


@pytest.fixture(scope="module")
def gen(sd15_engine, folder):
    """The tiny SD1.5 engine's pipe, with the upscaler folder."""
    return Generator(pipe=sd15_engine.pipe, upscaler_dir=folder)


def request(**settings):
    base = {"negative_prompt": "lowres", "sampler": "Euler", "steps": 3, "cfg_scale": 7.0, "seed": 11, "width": 64,
            "height": 64, "rng": "CPU", "hires_scale": 1.5, "hires_denoise": 0.5}
    return GenerationRequest("1girl", **{**base, **settings})


def reference(ref_pipe, upscaler_path):
    """A1111: first pass, astype(uint8), Upscaler.upscale with the model by max(W/w, H/h), Lanczos, hires pass."""
    first, _ = a1111_images(ref_pipe, "Euler", "1girl", "lowres", 3, 7.0, 11, width=64, height=64)
    pixels = Image.fromarray((255.0 * first).astype(np.uint8))
    upscaled = upscale_image(pixels, upscaler_path, 1.5, device="cpu")
    if upscaled.size != (96, 96):
        upscaled = upscaled.resize((96, 96), resample=Image.LANCZOS)
    image, _ = a1111_images(ref_pipe, "Euler", "1girl", "lowres", 3, 7.0, 11, width=96, height=96, strength=0.5,
                            fixed_steps=True, init_image=upscaled)
    return image


@pytest.mark.parametrize("name", ["4x-tiny", "2x-tiny", "4X-TINY"])
def test_hires_with_a_model_upscaler_is_decode_upscale_resize_encode(gen, folder, ref_pipe, one_torch_thread, name):
    path = next(folder.rglob(f"{name.lower()}.safetensors"))
    got = gen(request(hires_upscaler=name))[0]
    want = reference(ref_pipe, path)
    assert got.image.size == (96, 96) and np.abs(got.array - want).max() <= TOL
    assert parse_infotext(got.infotext)["Hires upscaler"] == path.stem  # A1111 records the upscaler's name
    lanczos = gen(request(hires_upscaler="Lanczos"))[0]
    assert np.abs(lanczos.array - want).max() > 10 * TOL  # the network, not a resize, made the difference


def test_a_model_upscaler_by_path_is_recorded_by_its_stem(sd15_engine, folder, ref_pipe, one_torch_thread):
    path = folder / "4x-tiny.safetensors"
    got = sd15_engine(request(hires_upscaler=str(path)))[0]  # no upscaler_dir: a path still works
    assert np.abs(got.array - reference(ref_pipe, path)).max() <= TOL
    assert parse_infotext(got.infotext)["Hires upscaler"] == "4x-tiny"


def test_unknown_names_fail_before_sampling_listing_the_valid_ones(gen):
    kp = gen.sampling()
    calls, unet_fn = [], kp._unet_fn
    kp._unet_fn = lambda *a: calls.append(1) or unet_fn(*a)
    try:
        for name in ("R-ESRGAN 4x+", "Bicubic", "pickled"):  # a .pth is not listed without allow_pickle
            with pytest.raises(AnimegenError, match=r"^hires_upscaler .*Latent.*Lanczos.*2x-tiny, 4x-tiny$"):
                gen(request(hires_upscaler=name))
    finally:
        del kp._unet_fn
    assert calls == []


def test_a_request_names_a_model_upscaler_without_knowing_the_folder():
    assert GenerationRequest("x", hires_upscaler="4x-tiny").validate() is None
    with pytest.raises(AnimegenError, match="hires_upscaler"):
        GenerationRequest("x", hires_upscaler=" ").validate()


def test_an_infotext_with_a_model_upscaler_reads_back_its_name():
    from animegen.generate import request_from_infotext

    text = ("1girl\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 11, Size: 64x64, Denoising strength: 0.5, "
            "Hires upscale: 1.5, Hires upscaler: 4x-UltraSharp")
    assert request_from_infotext(text).hires_upscaler == "4x-UltraSharp"  # resolved when it is generated


def test_the_listing_has_the_builtins_then_the_models_and_pth_only_with_allow_pickle(folder):
    safe = list_upscalers([folder])
    assert [e.name for e in safe] == ["None", "Lanczos", "Nearest", "2x-tiny", "4x-tiny"]
    assert [e.scale for e in safe] == [4, 4, 4, 2, 4]  # built-ins as A1111 lists them; models detected
    assert safe[3].path == (folder / "sub" / "2x-tiny.safetensors").resolve() and safe[3].model_name == "ESRGAN"
    with_pickles = list_upscalers([folder], allow_pickle=True)
    assert [e.name for e in with_pickles][3:] == ["2x-tiny", "4x-tiny", "pickled"]
    assert with_pickles[-1].scale is None  # its shapes are behind a pickle


def test_a_pickled_upscaler_runs_with_allow_pickle(sd15_engine, folder, one_torch_thread):
    gen = Generator(pipe=sd15_engine.pipe, upscaler_dir=[folder], allow_pickle=True)
    got = gen(request(hires_upscaler="pickled", steps=1))[0]
    assert got.image.size == (96, 96) and parse_infotext(got.infotext)["Hires upscaler"] == "pickled"


# ---- the CLI: --upscaler-dir resolves --hires-upscaler NAME, checked before the model loads ---------------------

@pytest.fixture
def recorded(monkeypatch):
    import animegen.generate

    seen = []  # (Generator kwargs, request): nothing is loaded
    monkeypatch.setitem(vars(animegen.generate), "Generator",
                        lambda *a, **k: lambda req, **kw: seen.append((k, req)) or [])
    return seen


def test_the_cli_passes_the_upscaler_dir_and_the_name(tmp_path, folder, recorded):
    from animegen.cli.main import app

    r = CliRunner().invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                                 "--hires-scale", "2", "--hires-upscaler", "4x-tiny", "--upscaler-dir", str(folder)])
    assert r.exit_code == 0, r.output
    ((kwargs, req),) = recorded
    assert kwargs["upscaler_dir"] == folder and req.hires_upscaler == "4x-tiny"


def test_the_cli_refuses_an_unknown_upscaler_before_loading(tmp_path, folder, recorded):
    from animegen.cli.main import app

    r = CliRunner().invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                                 "--hires-upscaler", "4x-tyny", "--upscaler-dir", str(folder)])
    assert r.exit_code == 2 and recorded == [] and "Traceback" not in r.output
    assert "--hires-upscaler 4x-tyny" in r.output and "2x-tiny, 4x-tiny" in r.output
    r = CliRunner().invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                                 "--hires-upscaler", "4x-tiny", "--upscaler-dir", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "--upscaler-dir" in r.output and recorded == []
    assert "--upscaler-dir" in CliRunner().invoke(app, ["generate", "--help"]).output
