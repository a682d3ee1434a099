"""Credentials, body/image size limits and the full-queue answer.

The model worker here is the FakeBackend stand-in (tests/serve/conftest.py): these guards act
before any generation, so the real Generator would only add load time (it runs in test_api.py).
"""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig, ServeLimits

SMALL = {"width": 64, "height": 64, "steps": 2}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _app(serve_dirs, backend, **overrides):
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), model_dir=serve_dirs["models"],
                         lora_dir=serve_dirs["loras"], **overrides)
    return create_app(config, backend=backend)


def test_credentials_guard_api_docs_and_ui(serve_dirs, fake_backend_cls):
    app = _app(serve_dirs, fake_backend_cls(), listen=True, api_auth="alice:pw,bob:pw2",
               api_token="token-0123456789")
    with TestClient(app) as client:
        for path in ["/sdapi/v1/options", "/docs", "/openapi.json", "/"]:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic")
            assert client.get(path, headers=basic("alice", "wrong")).status_code == 401
            assert client.get(path, headers=basic("mallory", "pw")).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert client.get(path, headers=basic("bob", "pw2")).status_code == 200, path
            assert client.get(path, headers={"Authorization": "Bearer token-0123456789"}).status_code == 200
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "p", **SMALL}).status_code == 401
        ok = client.post("/sdapi/v1/txt2img", json={"prompt": "p", **SMALL}, headers=basic("alice", "pw"))
        assert ok.status_code == 200 and len(ok.json()["images"]) == 1


def test_body_and_image_size_limits(serve_dirs, fake_backend_cls):
    limits = ServeLimits(max_body_bytes=4000, max_input_pixels=64 * 64)
    with TestClient(_app(serve_dirs, fake_backend_cls(), ui=False, limits=limits)) as client:
        big = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 5000, **SMALL})
        assert big.status_code == 413 and "4000" in big.json()["detail"]
        chunks = iter([b'{"prompt": "', b"y" * 3000, b"y" * 3000, b'"}'])  # no Content-Length: counted
        streamed = client.post("/sdapi/v1/txt2img", content=chunks, headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "ok", **SMALL}).status_code == 200

        buffer = io.BytesIO()
        Image.new("RGB", (65, 64)).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        too_many_pixels = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [image], **SMALL})
        assert too_many_pixels.status_code == 422
        assert too_many_pixels.json()["detail"][0]["loc"] == ["body", "init_images"]
        assert "pixels" in too_many_pixels.json()["detail"][0]["msg"]


def test_full_queue_answers_429_and_progress_counts_jobs(serve_dirs, fake_backend_cls):
    gate = threading.Event()
    backend = fake_backend_cls(gate=gate, steps=4)
    results: dict[str, object] = {}
    with TestClient(_app(serve_dirs, backend, ui=False, max_queue=1)) as client:

        def post(name):
            results[name] = client.post("/sdapi/v1/txt2img", json={"prompt": name, **SMALL})

        first = threading.Thread(target=post, args=("first",))
        first.start()
        deadline = time.time() + 20
        while client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            assert time.time() < deadline
            time.sleep(0.005)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        while client.get("/sdapi/v1/progress").json()["state"]["job_count"] < 2:
            assert time.time() < deadline
            time.sleep(0.005)
        refused = client.post("/sdapi/v1/txt2img", json={"prompt": "third", **SMALL})
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        progress = client.get("/sdapi/v1/progress").json()
        assert progress["state"]["job_count"] == 2 and progress["state"]["queued"] == 1
        assert progress["progress"] == pytest.approx(0.25)
        gate.set()
        first.join(20)
        second.join(20)
    assert [p for p, _ in backend.ran] == ["first", "second"]
    assert results["first"].status_code == results["second"].status_code == 200
