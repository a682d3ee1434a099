"""A1111's `/sdapi/v1/img2img` mask fields (issue #15): mapped onto `GenerationRequest`, checked, and used by the
`webuiapi` client against a live server; A1111's API defaults (fill, only masked, padding 0, blur 4)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def init_and_mask():
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = Image.new("L", (48, 32))
    mask.paste(255, (8, 8, 24, 24))
    return init, mask


@pytest.fixture
def recording(recording_backend, tiny_sd15_dir):
    return recording_backend, create_app(ServeConfig(model=str(tiny_sd15_dir), ui=False), backend=recording_backend)


def test_the_mask_fields_map_onto_the_request(recording):
    backend, app = recording
    init, mask = init_and_mask()
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/img2img", json={
            "prompt": "1girl", "init_images": [b64(init)], "mask": b64(mask), "mask_blur": 3, "inpainting_fill": 2,
            "inpaint_full_res": False, "inpaint_full_res_padding": 10, "inpainting_mask_invert": 1,
            "width": 64, "height": 64, "steps": 2})
        assert response.status_code == 200, response.text
        defaults = client.post("/sdapi/v1/img2img", json={
            "prompt": "1girl", "init_images": [b64(init)], "mask": b64(mask), "steps": 2})
        assert defaults.status_code == 200, defaults.text
        plain = client.post("/sdapi/v1/img2img", json={"prompt": "1girl", "init_images": [b64(init)], "steps": 2})
        assert plain.status_code == 200, plain.text
    sent, default, unmasked = backend.requests
    assert sent.mask.size == (48, 32) and np.asarray(sent.mask.convert("L"))[16, 16] == 255
    assert (sent.mask_blur, sent.inpainting_fill, sent.inpaint_full_res, sent.inpaint_full_res_padding,
            sent.inpainting_mask_invert) == (3, "latent noise", False, 10, True)
    # A1111's API defaults, not its UI's
    assert (default.mask_blur, default.inpainting_fill, default.inpaint_full_res, default.inpaint_full_res_padding,
            default.inpainting_mask_invert) == (4, "fill", True, 0, False)
    assert unmasked.mask is None


@pytest.mark.parametrize("body, field", [
    ({"mask": "not base64 at all!"}, "mask"),
    ({"inpainting_fill": 4}, "inpainting_fill"),
    ({"mask_blur": -1}, "mask_blur"),
])
def test_bad_mask_fields_are_refused_naming_the_field(recording, body, field):
    _, app = recording
    init, _ = init_and_mask()
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64(init)], **body})
    assert response.status_code in (400, 422)
    assert field in response.text


def test_webuiapi_inpaints_through_a_live_server(recording, server_runner):
    import webuiapi

    backend, app = recording
    init, mask = init_and_mask()
    with server_runner(app) as url:
        host, port = url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port))
        result = api.img2img(images=[init], mask_image=mask, inpainting_fill=1, mask_blur=2, inpaint_full_res=False,
                             inpainting_mask_invert=1, prompt="1girl", steps=2, width=64, height=64)
    assert result.image is not None
    sent = backend.requests[-1]
    assert sent.mask.size == (48, 32)
    assert (sent.mask_blur, sent.inpainting_fill, sent.inpaint_full_res, sent.inpainting_mask_invert) == (
        2, "original", False, True)


def test_a_live_server_with_the_tiny_model_keeps_the_unmasked_pixels(tiny_sd15_dir, server_runner):
    import webuiapi

    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (24, 24, 40, 40))
    app = create_app(ServeConfig(model=str(tiny_sd15_dir), ui=False, device="cpu"))
    with server_runner(app) as url:
        host, port = url.removeprefix("http://").split(":")
        api = webuiapi.WebUIApi(host=host, port=int(port))
        result = api.img2img(images=[init], mask_image=mask, inpainting_fill=1, mask_blur=0, inpaint_full_res=False,
                             prompt="1girl", steps=3, width=64, height=64, seed=3, denoising_strength=0.9)
    out, original = np.asarray(result.image.convert("RGB")).astype(int), np.asarray(init).astype(int)
    keep = np.asarray(mask) == 0
    assert (out[keep] == original[keep]).all()
    assert np.abs(out[~keep] - original[~keep]).mean() > 10
    assert "Mask blur" not in result.info["infotexts"][0]  # blur 0: A1111 writes no Mask blur
