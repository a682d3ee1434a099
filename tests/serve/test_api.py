"""The A1111-compatible REST API, on the real Generator and tiny SD1.5 models (64x64, 2-4 steps).

Pixel references come from calling `animegen.generate.Generator` directly with hand-mapped
requests, so these tests prove the API maps A1111's fields onto generation correctly.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from animegen.generate import SAMPLERS, GenerationRequest, Generator
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

SMALL = {"width": 64, "height": 64, "steps": 2}


def b64_png(image: Image.Image, text: str | None = None) -> str:
    buffer = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def client(serve_dirs):
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), model_dir=serve_dirs["models"],
                         lora_dir=serve_dirs["loras"], ui=False, max_queue=4)
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(serve_dirs):
    """The library itself on the same model, as the independent reference."""
    return Generator(serve_dirs["models"] / "tiny-a")


@pytest.fixture(scope="module")
def batch_response(client):
    body = {"prompt": "1girl, solo", "negative_prompt": "lowres", "seed": 123, "sampler_name": "Euler",
            "cfg_scale": 5, "batch_size": 2, "not_an_a1111_field": {"x": 1}, "restore_faces": False, **SMALL}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_txt2img_matches_the_library_and_returns_a1111_shapes(batch_response, reference):
    images = [decode(data) for data in batch_response["images"]]
    info = json.loads(batch_response["info"])
    expected = reference(GenerationRequest(prompt="1girl, solo", negative_prompt="lowres", sampler="Euler",
                                           steps=2, cfg_scale=5, seed=123, width=64, height=64, n=2,
                                           batch_size=2))
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    for got, want in zip(images, expected):
        assert np.array_equal(pixels(got), pixels(want.image))
    assert info["all_seeds"] == [123, 124] and info["seed"] == 123
    assert info["infotexts"] == [want.infotext for want in expected]
    assert [im.info["parameters"] for im in images] == info["infotexts"]  # PNGs carry their infotext
    assert info["sd_model_name"] == "tiny-a" and info["sampler_name"] == "Euler"
    params = batch_response["parameters"]
    assert params["prompt"] == "1girl, solo" and params["seed"] == 123 and "not_an_a1111_field" not in params


@pytest.mark.parametrize("body, field", [
    ({"steps": "many"}, "steps"),
    ({"width": "wide"}, "width"),
    ({"width": 4096}, "width"),
    ({"width": 100}, "width"),
    ({"steps": 10_000}, "steps"),
    ({"n_iter": 100}, "n_iter"),
    ({"sampler_name": "Nope"}, "sampler_name"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "CLIP_stop_at_last_layers"),
    ({"preset": "no-such-preset"}, "preset"),
])
def test_bad_fields_are_422_naming_the_field(client, body, field):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **body})
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"])


def test_img2img_zero_denoising_is_422_naming_the_a1111_field(client):
    image = b64_png(Image.new("RGB", (64, 64)))
    response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [image],
                                                      "denoising_strength": 0, **SMALL})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "denoising_strength"]


def test_img2img_matches_the_library(client, reference):
    init = Image.new("RGB", (64, 64), (200, 120, 40))
    body = {"prompt": "a cat", "init_images": [f"data:image/png;base64,{b64_png(init)}"], "seed": 7,
            "denoising_strength": 0.5, "sampler_name": "Euler", **SMALL, "steps": 4}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    got = decode(response.json()["images"][0])
    want = reference(GenerationRequest(prompt="a cat", sampler="Euler", steps=4, seed=7, width=64, height=64,
                                       init_image=init, strength=0.5))[0]
    assert np.array_equal(pixels(got), pixels(want.image))
    assert response.json()["parameters"]["init_images"] is None
    assert json.loads(response.json()["info"])["denoising_strength"] == 0.5


@pytest.mark.parametrize("image, reason", [("!!!not-base64!!!", "init_images"), (base64.b64encode(b"text").decode(),
                                                                                  "init_images")])
def test_img2img_rejects_undecodable_images(client, image, reason):
    response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [image], **SMALL})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", reason]


def test_listings(client, serve_dirs):
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny-a", "tiny-b"]
    assert all(not m["filename"].startswith("/") for m in models)
    assert [s["name"] for s in client.get("/sdapi/v1/samplers").json()] == list(SAMPLERS)
    from safetensors import safe_open

    with safe_open(str(serve_dirs["loras"] / "sub" / "strong.safetensors"), "pt") as f:
        header = f.metadata()  # the file's safetensors __metadata__ (test_api_routes checks A1111's JSON parsing)
    assert client.get("/sdapi/v1/loras").json() == [
        {"name": "strong", "alias": "strong", "path": "sub/strong.safetensors", "metadata": header}]
    assert client.get("/docs").status_code == 200
    assert "/sdapi/v1/txt2img" in client.get("/openapi.json").json()["paths"]


def test_options_switch_model_between_jobs(client):
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-a")
    body = {"prompt": "1girl", "seed": 5, **SMALL}
    on_a = client.post("/sdapi/v1/txt2img", json=body).json()
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b")
    on_b = client.post("/sdapi/v1/txt2img", json=body).json()
    assert json.loads(on_b["info"])["sd_model_name"] == "tiny-b"
    assert not np.array_equal(pixels(decode(on_a["images"][0])), pixels(decode(on_b["images"][0])))
    back = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a", "CLIP_stop_at_last_layers": 2})
    assert back.status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


@pytest.mark.parametrize("name, status", [("../outside/secret-model", 400), ("/etc/passwd", 400),
                                          ("escape", 404), ("evil.ckpt", 404), ("missing", 404)])
def test_model_names_cannot_leave_the_model_dir(client, name, status):
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}).status_code == status
    override = {"prompt": "x", **SMALL, "override_settings": {"sd_model_checkpoint": name}}
    assert client.post("/sdapi/v1/txt2img", json=override).status_code == status
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-a")


def test_lora_tags_resolve_inside_the_lora_dir_only(client):
    plain = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "seed": 9, **SMALL})
    with_lora = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl <lora:strong:1>", "seed": 9, **SMALL})
    assert plain.status_code == with_lora.status_code == 200, with_lora.text
    assert not np.array_equal(pixels(decode(plain.json()["images"][0])),
                              pixels(decode(with_lora.json()["images"][0])))
    assert "<lora:strong:1>" in json.loads(with_lora.json()["info"])["infotexts"][0]
    for tag, status in [("../outside/outside-lora", 400), ("/etc/passwd", 400), ("leak", 404), ("old", 404)]:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": f"x <lora:{tag}:1>", **SMALL})
        assert response.status_code == status, (tag, response.text)


def test_lora_te_and_unet_multipliers_reach_the_model_through_the_api(client):
    """`<lora:name:te:unet>` (A1111): the fixture's LoRA adapts the UNet only, so its UNet multiplier decides."""
    def image(prompt):
        response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "seed": 9, **SMALL})
        assert response.status_code == 200, response.text
        return pixels(decode(response.json()["images"][0])), json.loads(response.json()["info"])["infotexts"][0]

    plain, _ = image("1girl")
    full, _ = image("1girl <lora:strong:1>")
    te_only, te_info = image("1girl <lora:strong:1:0>")
    unet_only, _ = image("1girl <lora:strong:0:1>")
    np.testing.assert_array_equal(te_only, plain)
    np.testing.assert_array_equal(unet_only, full)
    assert "<lora:strong:1:0>" in te_info  # recorded as A1111 writes and reads it


def test_png_info_reads_generated_and_a1111_pngs(client, batch_response):
    generated = client.post("/sdapi/v1/png-info", json={"image": batch_response["images"][1]}).json()
    assert generated["info"] == json.loads(batch_response["info"])["infotexts"][1]
    assert generated["parameters"]["Seed"] == "124" and generated["parameters"]["Prompt"] == "1girl, solo"

    a1111 = "a cat, (masterpiece:1.2)\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 42, " \
            'Size: 512x768, Model: "x, y"'
    parsed = client.post("/sdapi/v1/png-info", json={"image": b64_png(Image.new("RGB", (8, 8)), a1111)}).json()
    assert parsed["info"] == a1111
    p = parsed["parameters"]
    assert (p["Prompt"], p["Negative prompt"], p["Steps"], p["Sampler"], p["Size-1"], p["Size-2"], p["Model"]) == (
        "a cat, (masterpiece:1.2)", "dog", "20", "DPM++ 2M", 512, 768, "x, y")
    empty = client.post("/sdapi/v1/png-info", json={"image": b64_png(Image.new("RGB", (8, 8)))}).json()
    assert empty["info"] == "" and empty["parameters"] == {}


def test_progress_and_interrupt_during_a_real_job(client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    box = {}
    body = {"prompt": "1girl", "seed": 1, "n_iter": 3, **SMALL, "steps": 12}
    worker = threading.Thread(target=lambda: box.setdefault("r", client.post("/sdapi/v1/txt2img", json=body)))
    worker.start()
    deadline = time.time() + 60
    while True:
        state = client.get("/sdapi/v1/progress").json()
        if state["state"]["sampling_step"] >= 1:
            break
        assert time.time() < deadline
        time.sleep(0.005)
    assert state["state"]["sampling_steps"] == 36 and 0 < state["progress"] <= 1
    assert state["state"]["job_count"] == 1
    assert client.post("/sdapi/v1/interrupt").json() == {}
    worker.join(60)
    response = box["r"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and len(response.json()["images"]) < 3
