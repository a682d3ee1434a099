"""A1111's `styles: [...]` field (issue #14): animegen's prompt presets are its styles (`/sdapi/v1/prompt-styles`
lists them), so one style name selects that preset, exactly as the request's `preset` field does; several styles,
or a name that is not a preset, are refused with 422 naming `styles` and the valid names.

The model worker is the FakeBackend stand-in (tests/serve/conftest.py): what matters is the request it is handed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from animegen.generate.request import resolve
from animegen.prompts.presets import list_presets
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture
def client(serve_dirs, recording_backend):
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), lora_dir=serve_dirs["loras"], ui=False)
    with TestClient(create_app(config, backend=recording_backend)) as test_client:
        test_client.backend = recording_backend
        yield test_client


def _styles_error(response) -> str:
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["detail"] if "styles" in e["loc"]]
    return error["msg"]


@pytest.mark.parametrize("style", ["animagine", "danbooru"])
def test_one_listed_style_applies_as_that_preset(client, style):
    listed = [s["name"] for s in client.get("/sdapi/v1/prompt-styles").json()]
    assert style in listed
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl, solo", "styles": [style], **SMALL})
    assert response.status_code == 200, response.text
    (sent,) = client.backend.requests
    assert sent.preset == style
    assert resolve(sent, 512) != resolve(replace(sent, preset="none"), 512)  # the style changed what runs
    assert response.json()["parameters"]["styles"] == [style]


def test_the_style_reaches_img2img_too(client):
    from PIL import Image

    from animegen.serve.codec import encode_png

    image = encode_png(Image.new("RGB", (64, 64)), "")
    response = client.post("/sdapi/v1/img2img", json={"prompt": "1girl", "styles": ["danbooru"],
                                                      "init_images": [image], **SMALL})
    assert response.status_code == 200, response.text
    assert client.backend.requests[0].preset == "danbooru"


@pytest.mark.parametrize("styles", [None, []])
def test_no_style_leaves_the_preset_field_in_charge(client, styles):
    body = {"prompt": "1girl", "preset": "danbooru", **SMALL, **({} if styles is None else {"styles": styles})}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert client.backend.requests[0].preset == "danbooru"


def test_an_unknown_style_is_422_listing_the_styles(client):
    message = _styles_error(client.post("/sdapi/v1/txt2img", json={"prompt": "a", "styles": ["Cinematic"], **SMALL}))
    assert "'Cinematic'" in message
    assert all(p.name in message for p in list_presets())
    assert not client.backend.requests


def test_several_styles_are_422_explaining_why(client):
    message = _styles_error(client.post("/sdapi/v1/txt2img",
                                        json={"prompt": "a", "styles": ["animagine", "danbooru"], **SMALL}))
    assert "one style" in message and "animagine" in message and "danbooru" in message
    assert not client.backend.requests


def test_a_style_and_a_different_preset_are_422(client):
    body = {"prompt": "a", "styles": ["animagine"], "preset": "danbooru", **SMALL}
    message = _styles_error(client.post("/sdapi/v1/txt2img", json=body))
    assert "animagine" in message and "danbooru" in message and "preset" in message
    same = {**body, "preset": "animagine"}
    assert client.post("/sdapi/v1/txt2img", json=same).status_code == 200
