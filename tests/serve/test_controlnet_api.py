"""sd-webui-controlnet's API shape (issue #15): `alwayson_scripts.controlnet.args` mapped onto
`GenerationRequest.controlnet_units`, models found by name in `controlnet_dir` only, and the /controlnet routes."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.serve.api_controlnet import units_from_api_args
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def served(recording_backend, tiny_sd15_dir, tmp_path):
    models = tmp_path / "ControlNet"
    (models / "sdxl").mkdir(parents=True)
    (models / "control_v11p_sd15_canny.safetensors").write_bytes(b"x")  # found by name; never loaded here
    (models / "sdxl" / "controlnet-tile-sdxl").mkdir()
    (models / "sdxl" / "controlnet-tile-sdxl" / "config.json").write_text("{}")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (models / "leak.safetensors").symlink_to(tmp_path / "outside.safetensors")
    config = ServeConfig(model=str(tiny_sd15_dir), ui=False, controlnet_dir=models)
    return recording_backend, create_app(config, backend=recording_backend), models


def test_controlnet_args_become_units_with_the_model_from_controlnet_dir(served):
    backend, app, models = served
    image = Image.new("RGB", (32, 24), (10, 200, 30))
    args = [{"enabled": True, "image": _b64(image), "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]",
             "weight": 0.6, "guidance_start": 0.1, "guidance_end": 0.8, "control_mode": "ControlNet is more important",
             "processor_res": 256, "threshold_a": 50, "threshold_b": 150, "resize_mode": 0, "pixel_perfect": True,
             "low_vram": False},
            {"enabled": False, "model": "nothing"},
            {"input_image": "data:image/png;base64," + _b64(image), "model": "controlnet-tile-sdxl",
             "module": "tile_resample", "control_mode": 1}]
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "steps": 2,
                                                           "alwayson_scripts": {"controlnet": {"args": args}}})
        assert response.status_code == 200, response.text
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "steps": 2}).status_code == 200
    sent, plain = backend.requests
    assert plain.controlnet_units == ()
    first, second = sent.controlnet_units
    assert first.model == models / "control_v11p_sd15_canny.safetensors"
    assert (first.weight, first.guidance_start, first.guidance_end, first.control_mode) == \
        (0.6, 0.1, 0.8, "ControlNet is more important")
    assert (first.preprocessor, first.processor_res, first.threshold_a, first.threshold_b) == ("canny", 256, 50, 150)
    assert (first.resize_mode, first.pixel_perfect) == ("Just Resize", True)
    assert first.image.size == (32, 24) and first.image.convert("RGB").getpixel((0, 0)) == (10, 200, 30)
    assert second.model == models / "sdxl" / "controlnet-tile-sdxl"
    assert (second.control_mode, second.preprocessor, second.resize_mode, second.weight) == \
        ("My prompt is more important", "tile_resample", "Crop and Resize", 1.0)


def test_img2img_unit_without_an_image_uses_the_init_image(served):
    backend, app, _ = served
    init = Image.new("RGB", (64, 64), (1, 2, 3))
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/img2img", json={
            "prompt": "x", "steps": 2, "init_images": [_b64(init)],
            "alwayson_scripts": {"ControlNet": {"args": [{"model": "control_v11p_sd15_canny"}]}}})
    assert response.status_code == 200, response.text
    (unit,) = backend.requests[0].controlnet_units
    assert unit.image.convert("RGB").getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("unit, text", [
    ({"model": "control_v11p_sd15_lineart"}, "ControlNet"),  # unknown: names the folder
    ({"model": "../outside"}, "not found"),  # a name, never a path
    ({"model": "leak"}, "not found"),  # a link out of the folder is not listed
    ({"model": "control_v11p_sd15_canny", "module": "nope"}, "module"),
    ({"model": "control_v11p_sd15_canny", "control_mode": 7}, "control_mode"),
    ({"model": "control_v11p_sd15_canny", "guidance_start": 0.9, "guidance_end": 0.1}, "guidance_start"),
    ({"model": "control_v11p_sd15_canny", "weight": "strong"}, "weight"),
    ({"model": "control_v11p_sd15_canny", "typo_field": 1}, "typo_field"),
    ({"module": "canny"}, "needs a model"),
])
def test_bad_controlnet_args_are_422_naming_the_problem(served, unit, text):
    _, app, models = served
    unit = {"image": _b64(Image.new("RGB", (8, 8))), **unit}
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {
            "controlnet": {"args": [unit]}}})
    assert response.status_code == 422, response.text
    assert text in response.text and "alwayson_scripts" in response.text
    if text == "ControlNet":
        assert str(models) in response.text


def test_txt2img_unit_without_an_image_is_refused():
    with pytest.raises(AnimegenError, match="no image"):
        units_from_api_args([{"model": "m"}], image=lambda d, f: d, find_model=str)


def test_model_and_module_lists(served):
    _, app, _ = served
    with TestClient(app) as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        modules = client.get("/controlnet/module_list").json()["module_list"]
    empty = hashlib.sha256(b"").hexdigest()[:8]  # A1111's legacy hash reads 64 KiB at 1 MiB: none of a tiny file
    assert models == [f"control_v11p_sd15_canny [{empty}]", "controlnet-tile-sdxl"]
    assert {"none", "canny", "tile_resample", "threshold", "invert", "lineart_anime"} <= set(modules)
