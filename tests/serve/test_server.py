"""A real uvicorn server on 127.0.0.1 (ephemeral port) under concurrent clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on `port`, read from /proc/net/tcp (Linux)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_cli_builds_the_configured_app(serve_dirs, monkeypatch):
    """The CLI path in-process, with uvicorn.run captured: flags reach the config and the app works."""
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from animegen.cli.main import app as cli_app

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    args = ["serve", "--model", str(serve_dirs["models"] / "tiny-a"), "--model-dir", str(serve_dirs["models"]),
            "--lora-dir", str(serve_dirs["loras"]), "--port", "7999", "--max-queue", "2", "--no-ui"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 7999)
    service = captured["app"].state.service
    assert (service.config.max_queue, service.config.ui) == (2, False)
    with TestClient(captured["app"], base_url="http://127.0.0.1") as client:  # loopback Host (DNS rebinding guard)
        assert [lora["name"] for lora in client.get("/sdapi/v1/loras").json()] == ["strong"]
        assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()] == ["tiny-a", "tiny-b"]
        assert client.get("/").status_code == 404  # --no-ui

    missing = CliRunner().invoke(cli_app, ["serve", "--model", str(serve_dirs["root"] / "nope")])
    assert missing.exit_code == 2 and "cannot load" in missing.output and "Traceback" not in missing.output


@pytest.mark.slow
def test_cli_serves_on_loopback(serve_dirs):
    """`animegen serve --model M --lora-dir D --port P --max-queue N` starts a working server on 127.0.0.1.

    Slow (a fresh interpreter imports torch); test_cli_builds_the_configured_app covers the same code.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "animegen.cli.main", "serve", "--model", str(serve_dirs["models"] / "tiny-a"),
               "--lora-dir", str(serve_dirs["loras"]), "--port", str(port), "--max-queue", "2", "--no-ui"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/loras", timeout=2)
                break
            except httpx.TransportError:
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.2)
        assert [lora["name"] for lora in response.json()] == ["strong"]
        txt2img = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", timeout=120,
                             json={"prompt": "cli", "seed": 3, **SMALL})
        assert txt2img.status_code == 200 and json.loads(txt2img.json()["info"])["all_seeds"] == [3]
        assert _listening_addresses(port) == {"127.0.0.1"}  # loopback only, by default
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
