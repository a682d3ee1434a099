"""A public server that cannot be frozen (issue #14): bounded requests, 4xx for bad input, no stuck connections.

Each limit of `ServeLimits` is tested over (4xx naming the field and the limit) and at the limit (accepted,
within a measured bound). The model worker is the FakeBackend stand-in (tests/serve/conftest.py): these
guards act before or around generation. Connection tests run a real uvicorn server on 127.0.0.1 with
`uvicorn_options`, the same options `animegen serve` uses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from animegen.serve.app import create_app, uvicorn_options
from animegen.serve.config import ServeConfig, ServeLimits

SMALL = {"width": 64, "height": 64, "steps": 2}


def _config(serve_dirs, **overrides) -> ServeConfig:
    return ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), model_dir=serve_dirs["models"],
                       lora_dir=serve_dirs["loras"], ui=False, **overrides)


@pytest.fixture
def client(serve_dirs, fake_backend_cls):
    backend = fake_backend_cls()
    with TestClient(create_app(_config(serve_dirs), backend=backend)) as test_client:
        test_client.backend = backend
        yield test_client


def _field_error(response, field: str) -> str:
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["detail"] if field in e["loc"]]
    return error["msg"]


# -- limits -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"])
def test_prompt_fields_over_the_limit_are_422_naming_the_field_and_the_limit(client, field):
    limit = ServeLimits().max_prompt_chars
    body = {"prompt": "a", **SMALL, "enable_hr": field.startswith("hr_"), field: "a" * (limit + 1)}
    message = _field_error(client.post("/sdapi/v1/txt2img", json=body), field)
    assert f"{limit + 1} characters" in message and str(limit) in message and field in message
    assert not client.backend.ran


def test_a_prompt_at_the_limit_of_the_worst_shape_is_accepted_quickly(client):
    limit = ServeLimits().max_prompt_chars
    for prompt in ["(a" * (limit // 2), "[a:" * (limit // 6) + "b" + ":1]" * (limit // 6), "<lora:" * (limit // 6)]:
        start = time.perf_counter()
        response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt[:limit], **SMALL})
        assert response.status_code == 200, response.text[:300]
        assert time.perf_counter() - start < 10


def test_too_many_extra_network_tags_is_422(client):
    limit = ServeLimits().max_extra_networks
    message = _field_error(client.post("/sdapi/v1/txt2img",
                                       json={"prompt": "<hypernet:h:1>" * (limit + 1), **SMALL}), "prompt")
    assert f"{limit + 1} extra-network tags" in message and str(limit) in message
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "<hypernet:h:1>" * limit, **SMALL}).status_code == 200


def test_steps_and_images_over_the_limit_are_422(client):
    limits = ServeLimits()
    assert "150" in _field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": limits.max_steps + 1}),
                                 "steps")
    assert "16" in _field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 17}), "n_iter")


def _scheduled_chars(prompt: str, negative: str, steps: int, **hires) -> int:
    """What the encoder gets for one pass: the characters of its distinct scheduled texts."""
    from animegen.prompts.schedule import pass_schedules

    plan = pass_schedules(prompt, negative, steps, **hires)
    return sum(map(len, plan.positive_texts())) + sum(map(len, plan.negative_texts()))


EDITS = " ".join(f"[red{i}:blue{i}:{i}]" for i in range(1, 41))  # a new text at each of 40 steps


def test_the_schedule_limit_defaults_to_eight_prompts():
    limits = ServeLimits()
    assert limits.max_schedule_chars == 8 * limits.max_prompt_chars


@pytest.mark.parametrize("over", [True, False])
def test_a_prompt_schedule_over_max_schedule_chars_is_422_naming_prompt(serve_dirs, fake_backend_cls, over):
    body = {"prompt": EDITS, "negative_prompt": "lowres", "width": 64, "height": 64, "steps": 40}
    total = _scheduled_chars(EDITS, "lowres", 40)
    assert total > 10 * len(EDITS)  # the schedule, not the prompt, is what is big
    backend = fake_backend_cls()
    limits = ServeLimits(max_schedule_chars=total - 1 if over else total)
    with TestClient(create_app(_config(serve_dirs, limits=limits), backend=backend)) as test_client:
        response = test_client.post("/sdapi/v1/txt2img", json=body)
    if over:
        message = _field_error(response, "prompt")
        assert str(total) in message and str(total - 1) in message and "max_schedule_chars" in message
        assert not backend.ran
    else:
        assert response.status_code == 200, response.text


def test_the_hires_pass_schedule_is_limited_too(serve_dirs, fake_backend_cls):
    body = {"prompt": "1girl", "hr_prompt": EDITS, "enable_hr": True, "hr_second_pass_steps": 40,
            "width": 64, "height": 64, "steps": 2}
    total = _scheduled_chars(EDITS, "", 2, hires_steps=40)
    limits = ServeLimits(max_schedule_chars=total - 1)
    with TestClient(create_app(_config(serve_dirs, limits=limits), backend=fake_backend_cls())) as test_client:
        message = _field_error(test_client.post("/sdapi/v1/txt2img", json=body), "hr_prompt")
    assert str(total) in message and "max_schedule_chars" in message


def test_the_worst_schedule_at_the_limits_is_refused_quickly(client):
    limits = ServeLimits()
    prompt = "".join(f"[{i % 10}:{i % 7}:{i % limits.max_steps + 1}]" for i in range(limits.max_prompt_chars // 9))
    prompt = prompt[: limits.max_prompt_chars]
    start = time.perf_counter()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "width": 64, "height": 64,
                                                      "steps": limits.max_steps})
    elapsed = time.perf_counter() - start
    assert "max_schedule_chars" in _field_error(response, "prompt")
    assert elapsed < 10, elapsed

def test_a_job_past_max_job_seconds_is_interrupted(serve_dirs, fake_backend_cls):
    gate = threading.Event()  # never opened: the job would run forever
    backend = fake_backend_cls(gate=gate)
    config = _config(serve_dirs, limits=ServeLimits(max_job_seconds=0.5))
    with TestClient(create_app(config, backend=backend)) as test_client:
        start = time.perf_counter()
        response = test_client.post("/sdapi/v1/txt2img", json={"prompt": "forever", **SMALL})
        elapsed = time.perf_counter() - start
    assert response.status_code == 200 and response.json()["images"] == []
    assert '"interrupted": true' in response.json()["info"]
    assert 0.4 < elapsed < 5


def test_a_job_cut_off_by_max_job_seconds_says_why(serve_dirs, fake_backend_cls, caplog):
    backend = fake_backend_cls(gate=threading.Event())  # never opened
    config = _config(serve_dirs, limits=ServeLimits(max_job_seconds=0.5))
    with TestClient(create_app(config, backend=backend)) as test_client, caplog.at_level("WARNING"):
        info = json.loads(test_client.post("/sdapi/v1/txt2img", json={"prompt": "forever", **SMALL}).json()["info"])
    assert info["interrupted"] is True
    assert info["interrupted_reason"] == "max_job_seconds (0.5 s) reached"
    assert any("max_job_seconds (0.5 s) reached" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


def test_a_job_that_finishes_in_time_has_no_interrupted_reason(client):
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "quick", **SMALL}).json()["info"])
    assert info["interrupted"] is False and info["interrupted_reason"] is None


# -- 4xx, never 500 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, literal", [("cfg_scale", "NaN"), ("subseed_strength", "Infinity"),
                                            ("guidance_rescale", "-Infinity")])
def test_nan_and_infinity_are_422_naming_the_field(client, field, literal):
    response = client.post("/sdapi/v1/txt2img", content=f'{{"prompt": "a", "{field}": {literal}}}',
                           headers={"content-type": "application/json"})
    assert "finite" in _field_error(response, field)


def test_a_lone_surrogate_in_a_prompt_is_422(client):
    response = client.post("/sdapi/v1/txt2img", content='{"prompt": "a\\ud800b", "negative_prompt": ""}',
                           headers={"content-type": "application/json"})
    assert "surrogate" in _field_error(response, "prompt")


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora::1>", "<lora:strong:te=x>"])
def test_unreadable_lora_tags_are_422_naming_the_tag(client, tag):
    message = _field_error(client.post("/sdapi/v1/txt2img", json={"prompt": f"1girl, {tag}", **SMALL}), "prompt")
    assert tag in message and "<lora:NAME:WEIGHT>" in message


def test_non_ascii_authorization_header_is_401(serve_dirs, fake_backend_cls):
    app = create_app(_config(serve_dirs, api_auth="alice:pw"), backend=fake_backend_cls())
    with TestClient(app) as test_client:
        for value in [b"Basic \xe9\xe9", b"Bearer \xff", "Basic " + base64.b64encode("é:pw".encode()).decode()]:
            response = test_client.get("/sdapi/v1/options", headers={"Authorization": value})
            assert response.status_code == 401


# -- live server --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def live(config: ServeConfig, backend):
    """`animegen serve`'s own uvicorn options, on an ephemeral loopback port."""
    options = uvicorn_options(create_app(config, backend=backend), config)
    options.update(port=0, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(**options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)


def _raw(port: int, request: bytes, *, read: bool = True) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock, (_read_response(sock) if read else b"")


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), b"0"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _get(path: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def _post(path: str, body: str, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


def test_70_silent_connections_do_not_block_a_normal_request(serve_dirs, fake_backend_cls):
    config = _config(serve_dirs, limits=ServeLimits(header_timeout=2.0))
    with live(config, fake_backend_cls()) as port:
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(70)]
        try:
            time.sleep(0.3)
            start = time.perf_counter()
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert response.status_code == 200 and time.perf_counter() - start < 3
            # ... and the silent ones are closed once the header timeout has passed.
            time.sleep(2.5)
            assert all(sock.recv(1) == b"" for sock in silent[:5])
        finally:
            for sock in silent:
                sock.close()


def test_a_bad_request_is_a_4xx_on_a_connection_that_stays_open(serve_dirs, fake_backend_cls):
    with live(_config(serve_dirs), fake_backend_cls()) as port:
        sock, first = _raw(port, _post("/sdapi/v1/txt2img", '{"prompt": "a", "cfg_scale": NaN}'))
        with sock:
            assert first.startswith(b"HTTP/1.1 422")
            sock.sendall(_post("/sdapi/v1/txt2img", '{"prompt": "<lora:x:abc>"}'))
            assert _read_response(sock).startswith(b"HTTP/1.1 422")
            sock.sendall(_get("/healthz"))
            assert _read_response(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:7860", "[::1]:80", "LOCALHOST"])
def test_a_loopback_server_without_auth_answers_loopback_host_names(serve_dirs, fake_backend_cls, host):
    with live(_config(serve_dirs), fake_backend_cls()) as port:
        sock, response = _raw(port, _get("/healthz", host=host))
        sock.close()
    assert response.startswith(b"HTTP/1.1 200")


def test_a_loopback_server_without_auth_refuses_other_host_names(serve_dirs, fake_backend_cls):
    with live(_config(serve_dirs), fake_backend_cls()) as port:
        for host in ["evil.example", "evil.example:7860", "127.0.0.1.evil.example"]:
            sock, response = _raw(port, _get("/healthz", host=host))
            sock.close()
            assert response.startswith(b"HTTP/1.1 421"), response
            assert b"DNS rebinding" in response and b"--api-auth" in response


def test_a_server_with_credentials_answers_any_host_name(serve_dirs, fake_backend_cls):
    with live(_config(serve_dirs, api_token="token-0123456789"), fake_backend_cls()) as port:
        sock, response = _raw(port, _get("/healthz", host="my-box.lan",
                                         extra="Authorization: Bearer token-0123456789\r\n"))
        sock.close()
    assert response.startswith(b"HTTP/1.1 200")


def test_a_queued_job_whose_client_left_is_dropped(serve_dirs, fake_backend_cls):
    gate = threading.Event()
    backend = fake_backend_cls(gate=gate)
    with live(_config(serve_dirs), backend) as port:
        holder = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img",
                                                            json={"prompt": "first", **SMALL}, timeout=30))
        holder.start()
        assert backend.started.wait(10)
        sock, _ = _raw(port, _post("/sdapi/v1/txt2img", '{"prompt": "gone", "steps": 2}'), read=False)
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress").json()["state"]["queued"] == 1)
        sock.close()
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress").json()["state"]["queued"] == 0)
        gate.set()
        holder.join(30)
        time.sleep(0.3)
    assert [prompt for prompt, _ in backend.ran] == ["first"]


def test_a_running_job_whose_client_left_is_interrupted(serve_dirs, fake_backend_cls):
    gate = threading.Event()  # never opened: only an interrupt ends the job
    backend = fake_backend_cls(gate=gate)
    with live(_config(serve_dirs), backend) as port:
        sock, _ = _raw(port, _post("/sdapi/v1/txt2img", '{"prompt": "gone", "steps": 2}'), read=False)
        assert backend.started.wait(10)
        sock.close()
        _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress").json()["state"]["job"] == "")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    assert backend.ran == []


def test_prompt_validation_runs_off_the_event_loop(serve_dirs, fake_backend_cls):
    app = create_app(_config(serve_dirs), backend=fake_backend_cls())
    service = app.state.service
    original, threads = service.build_request, []

    def slow_build_request(**kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(3.0)  # stands for validating a huge prompt
        return original(**kwargs)

    service.build_request = slow_build_request
    config = _config(serve_dirs)
    options = uvicorn_options(app, config)
    options.update(port=0, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(**options))
    thread = threading.Thread(target=server.run, daemon=True, name="event-loop")
    thread.start()
    _wait_for(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        poster = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img",
                                                            json={"prompt": "a", **SMALL}, timeout=30))
        poster.start()
        _wait_for(lambda: threads)
        start = time.perf_counter()
        assert httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress", timeout=5).status_code == 200
        assert time.perf_counter() - start < 1.5  # the loop was free: not blocked for the 3 s
        poster.join(30)
    finally:
        server.should_exit = True
        thread.join(15)
    assert threads and threads[0] != "event-loop"


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.02)
