"""The A1111 listing, state and Extras routes (issue #14), checked against A1111 1.10's field names and rules.

The expected values are transcribed from A1111's source (modules/api/api.py, modules/api/models.py,
modules/sd_schedulers.py, modules/upscaler.py, scripts/postprocessing_upscale.py), not from animegen's code;
the upscale references below are A1111's algorithm written out independently.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file
from test_api import decode  # tests/serve/test_api.py

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig, ServeLimits

LORA_METADATA = {"ss_output_name": "styled_v1", "ss_network_dim": "4", "ss_tag_frequency": '{"img": {"1girl": 3}}',
                 "not_json": "{half"}


def write_weights(path, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2, 2)}, str(path), metadata=metadata)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    models, loras = root / "models", root / "loras"
    write_weights(models / "ckpt.safetensors")
    write_weights(models / "anime.vae.safetensors")
    write_weights(models / "VAE" / "kl-f8.safetensors")
    write_weights(models / "sub" / "x.vae.safetensors")
    (models / "VAE" / "old.pt").write_bytes(b"\x80\x04pickle")
    write_weights(loras / "styled.safetensors", LORA_METADATA)
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    # a valid header whose tensor data is missing: only a header-only reader can list its metadata
    header = json.dumps({"__metadata__": {"ss_output_name": "big"},
                         "w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 * 1024 * 1024]}}).encode()
    (loras / "headeronly.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return {"models": models, "loras": loras}


def make_client(dirs, fake_backend_cls, **overrides):
    config = ServeConfig(model="start-model", model_dir=dirs["models"], lora_dir=dirs["loras"], ui=False,
                         **overrides)
    return TestClient(create_app(config, backend=fake_backend_cls()))


@pytest.fixture
def client(dirs, fake_backend_cls):
    with make_client(dirs, fake_backend_cls) as test_client:  # a stand-in backend: no route here generates
        yield test_client


def b64(image: Image.Image, text: dict[str, str] | None = None) -> str:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode)


# -- A1111's upscale, written out from modules/upscaler.py and scripts/postprocessing_upscale.py ------------------
def a1111_upscaler_upscale(img: Image.Image, scale: float, name: str) -> Image.Image:
    def do_upscale(im):
        if name == "None":
            return im
        resample = Image.LANCZOS if name == "Lanczos" else Image.NEAREST
        return im.resize((int(im.width * scale), int(im.height * scale)), resample=resample)

    dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
    for _ in range(3):
        shape = (img.width, img.height)
        img = do_upscale(img)
        if shape == (img.width, img.height) or (img.width >= dest_w and img.height >= dest_h):
            break
    if img.width != dest_w or img.height != dest_h:
        img = img.resize((int(dest_w), int(dest_h)), resample=Image.LANCZOS)
    return img


def a1111_extras(image, upscaler, mode=0, by=2.0, to_w=512, to_h=512, crop=True):
    image = image.convert("RGB")
    if mode == 1:
        by = max(to_w / image.width, to_h / image.height)
    image = a1111_upscaler_upscale(image, by, upscaler)
    if mode == 1 and crop:
        cropped = Image.new("RGB", (to_w, to_h))
        cropped.paste(image, box=(to_w // 2 - image.width // 2, to_h // 2 - image.height // 2))
        image = cropped
    return image


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


# -- listings ------------------------------------------------------------------------------------------------------
def test_sd_vae_lists_vae_files_in_the_model_dir_and_sd_models_does_not(client):
    vaes = client.get("/sdapi/v1/sd-vae").json()
    assert vaes == [{"model_name": "anime.vae.safetensors", "filename": "anime.vae.safetensors"},
                    {"model_name": "kl-f8.safetensors", "filename": "VAE/kl-f8.safetensors"},
                    {"model_name": "x.vae.safetensors", "filename": "sub/x.vae.safetensors"}]
    checkpoints = [m["filename"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert "ckpt.safetensors" in checkpoints
    assert not any("vae" in name.lower() for name in checkpoints)


def test_loras_return_each_files_safetensors_metadata_read_from_the_header(client):
    items = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
    styled = items["styled"]
    assert set(styled) == {"name", "alias", "path", "metadata"}
    assert styled["path"] == "styled.safetensors" and styled["alias"] == "styled"
    # A1111's read_metadata_from_safetensors: JSON-object strings parsed, everything else kept as text
    assert styled["metadata"] == {"ss_output_name": "styled_v1", "ss_network_dim": "4",
                                  "ss_tag_frequency": {"img": {"1girl": 3}}, "not_json": "{half"}
    assert items["headeronly"]["metadata"] == {"ss_output_name": "big"}
    assert items["broken"]["metadata"] == {}


def test_schedulers_list_a1111_1_10s_schedule_types_with_its_fields(client):
    got = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in got] == ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential",
                                         "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM",
                                         "Beta"]
    by_label = {s["label"]: s for s in got}
    assert set(got[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    assert by_label["SGM Uniform"]["name"] == "sgm_uniform" and by_label["SGM Uniform"]["aliases"] == ["SGMUniform"]
    assert by_label["Karras"]["aliases"] is None
    assert {k: s["default_rho"] for k, s in by_label.items() if s["default_rho"] != -1} == {"Karras": 7.0,
                                                                                             "Polyexponential": 1.0}
    assert {k for k, s in by_label.items() if s["need_inner_model"]} == {"Uniform", "SGM Uniform", "Simple", "Normal",
                                                                         "DDIM", "Beta"}


def test_upscalers_and_latent_upscale_modes(client):
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]  # shared.sd_upscalers' built-ins
    assert upscalers[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]


def test_prompt_styles_are_the_prompt_presets(client):
    from animegen.prompts.presets import build_prompt, list_presets

    styles = client.get("/sdapi/v1/prompt-styles").json()
    assert [s["name"] for s in styles] == [p.name for p in list_presets()]
    for style, preset in zip(styles, list_presets()):
        assert set(style) == {"name", "prompt", "negative_prompt"}
        assert "{prompt}" in style["prompt"] and style["negative_prompt"] == preset.negative
        # A1111 puts the prompt where the style says {prompt}: the text the preset builds for general tags (a
        # tag-ordering preset also moves count tags such as 1girl first, which a style string cannot say)
        assert style["prompt"].replace("{prompt}", "smile, outdoors") == build_prompt(preset, "smile, outdoors")


def test_memory_reports_ram_and_cuda_as_a1111(client):
    memory = client.get("/sdapi/v1/memory").json()
    ram = memory["ram"]
    assert set(ram) == {"free", "used", "total"} and 0 < ram["used"] < ram["total"]
    assert ram["free"] == ram["total"] - ram["used"]
    if torch.cuda.is_available():
        assert set(memory["cuda"]) == {"system", "active", "allocated", "reserved", "inactive", "events"}
    else:
        assert memory["cuda"] == {"error": "unavailable"}


def test_cmd_flags_show_the_configuration_and_never_the_credentials(dirs, fake_backend_cls):
    with make_client(dirs, fake_backend_cls, api_auth="user:secretpass", api_token="tok-secret-123") as c:
        response = c.get("/sdapi/v1/cmd-flags", auth=("user", "secretpass"))
    assert response.status_code == 200
    flags = response.json()
    assert "secretpass" not in response.text and "tok-secret-123" not in response.text
    assert flags["api_auth"] == "***" and flags["api_token"] == "***"
    assert flags["api"] is True and flags["nowebui"] is True
    assert flags["lora_dir"] == str(dirs["loras"]) and flags["ckpt_dir"] == str(dirs["models"])


def test_routes_for_what_animegen_has_none_of_answer_empty(client):
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    for route in ("script-info", "extensions", "hypernetworks", "face-restorers", "realesrgan-models"):
        response = client.get(f"/sdapi/v1/{route}")
        assert response.status_code == 200 and response.json() == [], route


def test_refresh_routes_answer_null_and_listings_see_new_files(client, dirs):
    for route in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings"):
        response = client.post(f"/sdapi/v1/{route}")
        assert response.status_code == 200 and response.json() is None, route
    write_weights(dirs["loras"] / "newer.safetensors")
    try:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "newer" in [item["name"] for item in client.get("/sdapi/v1/loras").json()]
    finally:
        (dirs["loras"] / "newer.safetensors").unlink()


# -- Extras --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upscaler, by", [("Lanczos", 2.0), ("Nearest", 1.7), ("Lanczos", 0.6)])
def test_extra_single_image_scales_as_a1111(client, upscaler, by):
    source = noise_image(37, 23, seed=1)
    body = {"image": b64(source, {"parameters": "1girl\nSteps: 2"}), "upscaler_1": upscaler, "upscaling_resize": by}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    result = decode(response.json()["image"])
    assert same_pixels(result, a1111_extras(source, upscaler, by=by))
    text = f"Postprocess upscale by: {by}, Postprocess upscaler: {upscaler}"
    assert result.info["postprocessing"] == text
    assert result.info["parameters"] == "1girl\nSteps: 2"  # the input's generation parameters are kept
    assert response.json()["html_info"] == f"<p>{text}</p>"


@pytest.mark.parametrize("crop", [True, False])
def test_extra_single_image_resize_to_size_and_crop(client, crop):
    source = noise_image(40, 30, seed=2, mode="RGBA")
    body = {"image": b64(source), "upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": 100,
            "upscaling_resize_h": 100, "upscaling_crop": crop}
    result = decode(client.post("/sdapi/v1/extra-single-image", json=body).json()["image"])
    expected = a1111_extras(source, "Nearest", mode=1, to_w=100, to_h=100, crop=crop)
    assert same_pixels(result, expected) and (result.size == (100, 100)) == crop
    info = "Postprocess upscale to: 100x100, Postprocess crop to: 100x100" if crop else "Postprocess upscale to: 100x100"
    assert result.info["postprocessing"] == f"{info}, Postprocess upscaler: Nearest"


def test_second_upscaler_is_blended_at_its_visibility(client):
    source = noise_image(24, 16, seed=3)
    body = {"image": b64(source), "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.3,
            "upscaling_resize": 3}
    result = decode(client.post("/sdapi/v1/extra-single-image", json=body).json()["image"])
    expected = Image.blend(a1111_extras(source, "Lanczos", by=3), a1111_extras(source, "Nearest", by=3), 0.3)
    assert same_pixels(result, expected)
    assert result.info["postprocessing"].endswith("Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest")


def test_upscaler_none_returns_the_image_unchanged(client):
    source = noise_image(20, 12, seed=4)
    response = client.post("/sdapi/v1/extra-single-image", json={"image": b64(source), "upscaling_resize": 4})
    assert same_pixels(decode(response.json()["image"]), source)  # A1111's default upscaler_1 "None" skips the step


@pytest.mark.parametrize("body, field, words", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1", "None, Lanczos, Nearest"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "Latent"}, "upscaler_2", "None, Lanczos, Nearest"),
    ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, "gfpgan_visibility", "face restorer"),
    ({"upscaler_1": "Lanczos", "codeformer_visibility": 1}, "codeformer_visibility", "face restorer"),
])
def test_what_animegen_cannot_do_is_a_422_naming_the_field(client, body, field, words):
    response = client.post("/sdapi/v1/extra-single-image", json={"image": b64(noise_image(8, 8)), **body})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and words in detail["msg"]


def test_extras_obey_the_servers_image_limits(dirs, fake_backend_cls):
    limits = ServeLimits(max_pixels=128 * 128, max_input_pixels=64 * 64, max_images=2)
    with make_client(dirs, fake_backend_cls, limits=limits) as c:
        ok = c.post("/sdapi/v1/extra-single-image", json={"image": b64(noise_image(64, 64)), "upscaler_1": "Lanczos"})
        assert ok.status_code == 200 and decode(ok.json()["image"]).size == (128, 128)
        big = c.post("/sdapi/v1/extra-single-image",
                     json={"image": b64(noise_image(64, 64)), "upscaler_1": "Lanczos", "upscaling_resize": 4})
        assert big.status_code == 422 and big.json()["detail"][0]["loc"] == ["body", "upscaling_resize"]
        assert "16384" in big.json()["detail"][0]["msg"]
        upload = c.post("/sdapi/v1/extra-single-image", json={"image": b64(noise_image(65, 64)), "upscaler_1": "None"})
        assert upload.status_code == 422 and upload.json()["detail"][0]["loc"] == ["body", "image"]
        files = [{"data": b64(noise_image(8, 8)), "name": f"{i}.png"} for i in range(3)]
        many = c.post("/sdapi/v1/extra-batch-images", json={"imageList": files, "upscaler_1": "Lanczos"})
        assert many.status_code == 422 and many.json()["detail"][0]["loc"] == ["body", "imageList"]


def test_extra_batch_images_upscales_each_image(client):
    sources = [noise_image(16, 16, seed=5), noise_image(24, 8, seed=6)]
    body = {"imageList": [{"data": b64(im), "name": f"{i}.png"} for i, im in enumerate(sources)],
            "upscaler_1": "Lanczos", "upscaling_resize": 2}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    results = [decode(data) for data in response.json()["images"]]
    assert [r.size for r in results] == [(32, 32), (48, 16)]
    for got, source in zip(results, sources):
        assert same_pixels(got, a1111_extras(source, "Lanczos", by=2))
    assert response.json()["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"


def test_the_webuiapi_client_reads_these_routes_from_a_live_server(dirs, fake_backend_cls, server_runner):
    """`webuiapi` (the client people script A1111 with) against a real uvicorn server."""
    import webuiapi

    config = ServeConfig(model="start-model", model_dir=dirs["models"], lora_dir=dirs["loras"], ui=False)
    app = create_app(config, backend=fake_backend_cls())
    with server_runner(app) as url:
        host, port = url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port))
        assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
        assert "Karras" in [s["label"] for s in api.get_schedulers()]
        assert api.get_sd_vae()[0]["model_name"] == "anime.vae.safetensors"
        assert "animagine" in [s["name"] for s in api.get_prompt_styles()]
        assert "ram" in api.get_memory() and api.get_scripts() == {"txt2img": [], "img2img": []}
        assert {item["name"] for item in api.get_loras()} >= {"styled"}
        result = api.extra_single_image(noise_image(20, 20, seed=7), upscaler_1="Lanczos", upscaling_resize=2)
        assert result.image.size == (40, 40)
        assert same_pixels(result.image, a1111_extras(noise_image(20, 20, seed=7), "Lanczos", by=2))
        api.skip()
        api.refresh_checkpoints()
