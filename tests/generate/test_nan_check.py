"""NaN model weights never give a saved black image (issue #12 item 11), as A1111's `test_for_nans`:
NaN/inf in the denoised latents is an error naming the unet, NaN in the decoded pixels one naming the vae;
the CLI exits 2 and saves nothing, the API answers an error; `nan_check` off (A1111's
`--disable-nan-check`) returns the image as before."""

from __future__ import annotations

import contextlib
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from animegen.core.errors import AnimegenError
from animegen.generate import GenerationRequest, Generator

REQ = {"sampler": "Euler", "steps": 2, "width": 64, "height": 64, "seed": 11}
UNET_WEIGHT, VAE_WEIGHT = "conv_in.weight", "decoder.conv_out.bias"


@pytest.fixture(scope="module")
def gen(tiny_sd15_dir):
    return Generator(tiny_sd15_dir, device="cpu")


@contextlib.contextmanager
def poisoned(module: torch.nn.Module, name: str, value: float = math.nan):
    """One element of `module`'s tensor `name` set to `value` for the block, restored afterwards."""
    tensor = module.state_dict()[name]
    old = tensor.flatten()[0].item()
    with torch.no_grad():
        tensor.view(-1)[0] = value
    try:
        yield
    finally:
        with torch.no_grad():
            tensor.view(-1)[0] = old


def test_nan_in_the_unet_is_an_error_naming_unet_and_the_tensor(gen):
    with poisoned(gen.pipe.unet, UNET_WEIGHT), pytest.raises(AnimegenError) as info:
        gen(GenerationRequest("1girl", **REQ))
    msg = str(info.value)
    assert info.value.stage == "unet" and info.value.seeds == [11]
    assert "unet" in msg and f"unet.{UNET_WEIGHT}" in msg and "seed 11" in msg and "\n" not in msg
    assert "--no-nan-check" in msg
    assert np.isfinite(gen(GenerationRequest("1girl", **REQ))[0].array).all()  # restored: fine again


def test_nan_in_the_vae_is_an_error_naming_vae(gen):
    with poisoned(gen.pipe.vae, VAE_WEIGHT), pytest.raises(AnimegenError) as info:
        gen(GenerationRequest("1girl", n=2, batch_size=2, **REQ))
    msg = str(info.value)
    assert info.value.stage == "vae" and info.value.seeds == [11, 12]
    assert "vae" in msg and f"vae.{VAE_WEIGHT}" in msg and "--vae" in msg and "unet" not in msg


def test_finite_weights_that_overflow_are_not_called_damaged(gen):
    """A VAE whose weights are finite but overflow fp32 (what fp16 VAEs do at 65504) gets the overflow fix."""
    with poisoned(gen.pipe.vae, "decoder.conv_in.weight", 3e38), pytest.raises(AnimegenError) as info:
        gen(GenerationRequest("1girl", **REQ))
    assert info.value.stage == "vae" and "weights are finite" in str(info.value) and "--vae" in str(info.value)


def test_an_fp16_overflow_suggests_fp32_or_an_fp16_safe_vae(tiny_sd15_dir):
    """The common real case (SDXL's VAE in fp16): finite weights, activations past fp16's 65504."""
    half = Generator(tiny_sd15_dir, device="cpu", dtype="fp16")
    with torch.no_grad():
        half.pipe.vae.decoder.conv_in.weight.fill_(6e4)
    with pytest.raises(AnimegenError) as info:
        half(GenerationRequest("1girl", **REQ))
    msg = str(info.value)
    assert info.value.stage == "vae" and "overflowed in fp16" in msg and "--dtype fp32" in msg


def test_a_nan_in_one_image_of_a_batch_names_its_seed(gen):
    from animegen.generate.nan_check import NonFiniteOutputError, check_output

    latents = torch.zeros(3, 4, 8, 8)
    images = np.zeros((3, 64, 64, 3), dtype=np.float32)
    check_output(gen.pipe, latents, images, [5, 6, 7])  # all finite: nothing raised
    images[1, 3, 3, 0] = np.nan
    with pytest.raises(NonFiniteOutputError, match="seed 6 ") as info:
        check_output(gen.pipe, latents, images, [5, 6, 7])
    assert info.value.stage == "vae"
    latents[2, 0, 0, 0] = math.inf  # the UNet is named first: its NaN is why the pixels are NaN too
    with pytest.raises(NonFiniteOutputError, match="seed 7 ") as info:
        check_output(gen.pipe, latents, images, [5, 6, 7])
    assert info.value.stage == "unet"


def test_nan_check_off_returns_the_image_as_a1111_disable_nan_check(tiny_sd15_dir, gen):
    off = Generator(tiny_sd15_dir, device="cpu", pipe=gen.pipe, nan_check=False)
    with poisoned(gen.pipe.unet, UNET_WEIGHT):
        (image,) = off(GenerationRequest("1girl", **REQ))
    assert not np.isfinite(image.array).all()


@pytest.fixture(scope="module")
def nan_model(tiny_sd15_dir, tmp_path_factory):
    """A copy of the tiny model whose UNet file holds a NaN weight (as a damaged download would)."""
    folder = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(tiny_sd15_dir, folder)
    (path,) = (folder / "unet").glob("*.safetensors")
    weights = load_file(str(path))
    weights[UNET_WEIGHT].view(-1)[0] = math.nan
    save_file(weights, str(path))
    return folder


def test_cli_exits_2_and_saves_nothing_and_no_nan_check_saves(nan_model, tmp_path):
    from animegen.cli.main import app

    runner = CliRunner()
    args = ["generate", "1girl", "--model", str(nan_model), "--steps", "2", "--width", "64", "--height", "64",
            "--device", "cpu", "--seed", "3", "--layout", "flat"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 2, r.output
    assert "unet" in r.output and f"unet.{UNET_WEIGHT}" in r.output and "Traceback" not in r.output
    assert not list((tmp_path / "a").glob("*.png"))
    r = runner.invoke(app, [*args, "--no-nan-check", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "00000-3.png").is_file()


def test_api_answers_an_error_naming_unet(nan_model):
    from fastapi.testclient import TestClient

    from animegen.serve.app import create_app
    from animegen.serve.config import ServeConfig

    body = {"prompt": "1girl", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
    with TestClient(create_app(ServeConfig(model=str(nan_model), device="cpu", ui=False))) as client:
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 500 and "unet" in r.json()["detail"] and "NaN" in r.json()["detail"]
    with TestClient(create_app(ServeConfig(model=str(nan_model), device="cpu", ui=False, nan_check=False))) as c:
        r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
