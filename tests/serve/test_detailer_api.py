"""ADetailer's API shape (issue #15): `alwayson_scripts.ADetailer.args` mapped onto `GenerationRequest.detailers`,
detectors found by name in `adetailer_dir` only, and what animegen cannot do refused naming the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from animegen.generate.detailer import DetailerUnit, units_from_api_args
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig


@pytest.fixture
def served(recording_backend, tiny_sd15_dir, tmp_path):
    detectors = tmp_path / "adetailer"
    detectors.mkdir()
    (detectors / "face_yolov8n.onnx").write_bytes(b"onnx")  # found by name; never run by the recording backend
    (tmp_path / "elsewhere.onnx").write_bytes(b"onnx")
    config = ServeConfig(model=str(tiny_sd15_dir), ui=False, adetailer_dir=detectors)
    return recording_backend, create_app(config, backend=recording_backend), detectors


def test_adetailer_args_become_detailer_units_with_the_detector_from_adetailer_dir(served):
    backend, app, detectors = served
    args = [True, False, {"ad_model": "face_yolov8n.pt", "ad_prompt": "smile", "ad_confidence": 0.5,
                          "ad_denoising_strength": 0.3, "ad_use_steps": True, "ad_steps": 12, "ad_cfg_scale": 9,
                          "ad_inpaint_only_masked_padding": 16},
            {"ad_model": "None"}]
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "steps": 2,
                                                           "alwayson_scripts": {"ADetailer": {"args": args}}})
        assert response.status_code == 200, response.text
        plain = client.post("/sdapi/v1/txt2img", json={"prompt": "1girl", "steps": 2})
        assert plain.status_code == 200
    sent, unsent = backend.requests
    assert sent.detailers == (DetailerUnit(str(detectors / "face_yolov8n.onnx"), prompt="smile", confidence=0.5,
                                           denoise=0.3, steps=12, padding=16),)  # no ad_use_cfg_scale: cfg unset
    assert unsent.detailers == ()


@pytest.mark.parametrize("args, status, text", [
    ([True, False, {"ad_model": "hand_yolov8n.pt"}], 404, "known detectors: face_yolov8n.onnx"),
    ([True, False, {"ad_model": "../elsewhere.onnx"}], 404, "elsewhere.onnx"),  # a name, never a path
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_use_sampler": True}], 422, "ad_use_sampler"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_confidence": 2}], 422, "confidence"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_steps": 500, "ad_use_steps": True}], 422, "steps"),
    ([True, False, {"ad_model": "face_yolov8n.pt", "ad_typo": 1}], 422, "ad_typo"),
])
def test_bad_adetailer_args_are_refused_naming_the_field(served, args, status, text):
    _, app, _ = served
    with TestClient(app) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"ADetailer": {
            "args": args}}})
    assert response.status_code == status, response.text
    assert text in response.text and "alwayson_scripts" in response.text


def test_adetailer_args_shapes():
    assert units_from_api_args([False, False, {"ad_model": "face.onnx"}]) == ()
    assert units_from_api_args([{"ad_model": "face.onnx"}]) == (DetailerUnit("face.onnx"),)  # no leading booleans
    assert units_from_api_args([True, {"ad_model": "a.onnx", "ad_tap_enable": False}, {"ad_model": "b.onnx",
                                "ad_inpaint_width": 768, "ad_use_inpaint_width_height": True}]) == (
        DetailerUnit("b.onnx", width=768),)
