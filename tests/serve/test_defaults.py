"""Generation defaults have one home (`animegen.generate.request.resolve`): the REST API and the web UI
leave what the client did not set unset, so a preset's settings apply exactly as through the CLI/library.

The model worker is the FakeBackend stand-in: what matters is the request it is handed.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from animegen.generate.request import GenerationRequest, resolve
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig
from animegen.serve.schemas import Img2ImgRequest, Txt2ImgRequest
from animegen.serve.service import ServeService

SETTINGS = ("sampler_name", "steps", "cfg_scale", "width", "height")


def _config(serve_dirs, **overrides) -> ServeConfig:
    return ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), lora_dir=serve_dirs["loras"], **overrides)


def _library(preset: str) -> GenerationRequest:
    """What `animegen generate PROMPT --preset P --seed 5` and `animegen.generate_images` build."""
    return GenerationRequest(prompt="1girl, solo", preset=preset, seed=5)


@pytest.mark.parametrize("preset", ["animagine", "danbooru"])
def test_a_preset_applies_through_the_a1111_api_as_through_the_library(serve_dirs, recording_backend, preset):
    size = recording_backend.default_size
    with TestClient(create_app(_config(serve_dirs, ui=False), backend=recording_backend)) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl, solo", "preset": preset, "seed": 5})
    assert response.status_code == 200, response.text
    (sent,) = recording_backend.requests
    want = resolve(_library(preset), size)
    assert resolve(sent, size) == want
    assert (want.width, want.height) != (size, size)  # the preset's size, not the family default, won


def test_without_a_preset_the_api_uses_the_family_defaults(serve_dirs, recording_backend):
    with TestClient(create_app(_config(serve_dirs, ui=False), backend=recording_backend)) as client:
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "1girl, solo", "seed": 5}).status_code == 200
    (sent,) = recording_backend.requests
    assert resolve(sent, 1024) == resolve(_library("none"), 1024)  # size left to the model family


def test_explicit_api_fields_still_win_over_the_preset(serve_dirs, recording_backend):
    body = {"prompt": "1girl", "preset": "animagine", "seed": 5, "steps": 3, "width": 64, "height": 72}
    with TestClient(create_app(_config(serve_dirs, ui=False), backend=recording_backend)) as client:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    (sent,) = recording_backend.requests
    got = resolve(sent, 512)
    assert (got.steps, got.width, got.height, got.cfg_scale) == (3, 64, 72, 5.0)


@pytest.mark.parametrize("schema", [Txt2ImgRequest, Img2ImgRequest])
def test_the_api_schema_declares_no_second_copy_of_the_defaults(schema):
    for name in SETTINGS:
        assert schema.model_fields[name].default is None, f"{schema.__name__}.{name} has its own default"
    assert schema.model_fields["preset"].default == GenerationRequest.__dataclass_fields__["preset"].default


def test_a_preset_applies_through_the_ui_request_builder_as_through_the_library(serve_dirs, recording_backend):
    pytest.importorskip("gradio")
    from animegen.serve import ui_form
    from animegen.serve.ui import build_parts

    service = ServeService(_config(serve_dirs), backend=recording_backend)
    try:
        controls = build_parts(service).txt2img
        shown = {name: controls[name].value for name in ui_form.names(ui_form.TXT2IMG)}
        # the user types a prompt, picks a preset and a seed, and touches nothing else
        shown.update(prompt="1girl, solo", preset="animagine", seed=5)
        request = service.build_request(**ui_form.request_kwargs(ui_form.TXT2IMG, shown))
    finally:
        service.close()
    size = recording_backend.default_size
    assert resolve(request, size) == resolve(_library("animagine"), size)
