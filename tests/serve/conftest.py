"""Fixtures for `animegen serve`: a model folder with real tiny checkpoints, a stand-in backend for
queueing tests, and a real uvicorn server on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time

import pytest
import torch
from PIL import Image

from animegen.generate import GeneratedImage
from animegen.serve.service import GenerationResult


@pytest.fixture(scope="session")
def serve_dirs(tiny_sd15_dir, tmp_path_factory):
    """models/ with two different tiny SD1.5 models, a pickled .ckpt and an escaping symlink; loras/ with one LoRA.

    The LoRA changes the first UNet attention's query weight strongly, so its effect on pixels is visible.
    """
    from animegen.models.lora import LoraFile, LoraModule, write_lora
    from animegen.models.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    shutil.copytree(tiny_sd15_dir, models / "tiny-a")
    save_tiny_model("sd15", models / "tiny-b", seed=1)
    (models / "evil.ckpt").write_bytes(b"\x80\x04pickle")
    outside = root / "outside"
    outside.mkdir()
    shutil.copytree(tiny_sd15_dir, outside / "secret-model")
    (models / "escape").symlink_to(outside / "secret-model", target_is_directory=True)

    loras = root / "loras"
    (loras / "sub").mkdir(parents=True)
    unet_config = json.loads((tiny_sd15_dir / "unet" / "config.json").read_text())
    dim = unet_config["block_out_channels"][0]  # to_q of the first block is dim x dim
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    generator = torch.Generator().manual_seed(0)
    down = torch.randn(4, dim, generator=generator)
    up = torch.randn(dim, 4, generator=generator)
    module = LoraModule(target=f"unet.{target}", kind="lora",
                        tensors={"lora_down.weight": down, "lora_up.weight": up}, alpha=4.0)
    write_lora(LoraFile(modules={module.target: module}, metadata={}), loras / "sub" / "strong.safetensors")
    (loras / "old.pt").write_bytes(b"\x80\x04pickle")
    (outside / "outside-lora.safetensors").write_bytes((loras / "sub" / "strong.safetensors").read_bytes())
    (loras / "leak.safetensors").symlink_to(outside / "outside-lora.safetensors")
    return {"root": root, "models": models, "loras": loras, "outside": outside}


class FakeBackend:
    """Stand-in for the model worker where generation speed would dominate (queue/concurrency tests).

    Each job takes `delay` seconds (or, with a `gate`, waits for it to open after every step), reports
    its steps to `progress`, records the order it ran jobs in and on which model, and returns one 8x8
    image whose infotext is the prompt, so a client can check it got its own answer. The prompt
    "fail" raises, to test that one failing job does not disturb the others.
    """

    def __init__(self, delay: float = 0.0, steps: int = 4, gate: threading.Event | None = None):
        self.delay, self.steps, self.gate = delay, steps, gate
        self.loaded = None
        self.default_size = 512  # the tiny SD1.5 models' family
        self.model_name, self.model_hash = "fake", None
        self.ran: list[tuple[str, str]] = []  # (prompt, model name)
        self.loads: list[str] = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    def load(self, entry) -> None:
        self.loaded = entry
        self.loads.append(entry.name)

    def generate(self, request, progress, interrupt) -> GenerationResult:
        self.started.set()
        if request.prompt == "fail":
            raise RuntimeError("backend failure on purpose")
        for step in range(1, self.steps + 1):
            if interrupt.is_set():
                return GenerationResult([], self.loaded.name, None, interrupted=True)
            progress(step, self.steps)
            if self.gate is not None:
                while not self.gate.wait(0.01) and not interrupt.is_set():
                    pass
            elif self.delay:
                time.sleep(self.delay / self.steps)
        with self.lock:
            self.ran.append((request.prompt, self.loaded.name))
        image = Image.new("RGB", (8, 8), (len(self.ran) % 256, 0, 0))
        return GenerationResult([GeneratedImage(image, request.seed, request.prompt)], self.loaded.name, None)


@pytest.fixture
def fake_backend_cls():
    return FakeBackend


@pytest.fixture
def recording_backend(fake_backend_cls):
    """A FakeBackend that also keeps every `GenerationRequest` it is handed (`.requests`)."""

    class Recording(fake_backend_cls):
        def __init__(self):
            super().__init__()
            self.requests = []

        def generate(self, request, progress, interrupt):
            self.requests.append(request)
            return super().generate(request, progress, interrupt)

    return Recording()


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on 127.0.0.1 and an ephemeral port; yield the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def server_runner():
    return running_server
