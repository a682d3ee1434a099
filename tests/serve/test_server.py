"""A real uvicorn server on 127.0.0.1 (ephemeral port) under concurrent clients."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

SMALL = {"width": 64, "height": 64, "steps": 2}


def _hammer(base_url: str, clients: int, per_client: int, body_for) -> list[tuple[str, int, dict]]:
    """`clients` threads, each with its own connection, each sending `per_client` requests."""

    def client_run(index: int):
        out = []
        with httpx.Client(base_url=base_url, timeout=120) as client:
            for k in range(per_client):
                body = body_for(index, k)
                response = client.post("/sdapi/v1/txt2img", json=body)
                out.append((body["prompt"], response.status_code,
                            response.json() if response.status_code == 200 else {}))
        return out

    with ThreadPoolExecutor(clients) as pool:
        return [item for chunk in pool.map(client_run, range(clients)) for item in chunk]


def test_100_requests_from_20_clients_are_each_answered_once(serve_dirs, fake_backend_cls, server_runner):
    """Queue behaviour under load; the FakeBackend stand-in (20 ms per job) keeps the test fast."""
    backend = fake_backend_cls(delay=0.02, steps=2)
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), ui=False, max_queue=3)
    start = time.time()
    with server_runner(create_app(config, backend=backend)) as url:
        results = _hammer(url, clients=20, per_client=5, body_for=lambda i, k: {"prompt": f"c{i}-r{k}", **SMALL})
    elapsed = time.time() - start
    assert len(results) == 100 and elapsed < 60
    statuses = [status for _, status, _ in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) > 0  # 20 clients vs 3 queue slots
    answered = {prompt: json.loads(body["info"])["infotexts"] for prompt, status, body in results if status == 200}
    assert all(texts == [prompt] for prompt, texts in answered.items())  # each got its own job's result
    ran = [prompt for prompt, _ in backend.ran]
    assert len(ran) == len(set(ran)) and set(ran) == set(answered)  # no job lost, none run twice


def test_real_generator_under_concurrent_clients(serve_dirs, server_runner):
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), ui=False, max_queue=16)
    with server_runner(create_app(config)) as url:
        results = _hammer(url, clients=4, per_client=1,
                          body_for=lambda i, k: {"prompt": f"1girl {i}", "seed": 1000 + 10 * i + k, **SMALL})
        with httpx.Client(base_url=url) as client:
            assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert [status for _, status, _ in results] == [200] * 4
    for prompt, _, body in results:
        info = json.loads(body["info"])
        i = int(prompt.split()[1])
        assert info["prompt"] == prompt and info["seed"] == 1000 + 10 * i
        assert f"Seed: {info['seed']}," in info["infotexts"][0] and info["infotexts"][0].startswith(prompt)
