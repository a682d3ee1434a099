"""A1111's skip (`POST /sdapi/v1/skip`, `state.skip()`): the current batch stops sampling and is decoded as it is,
the next batch of the same job runs normally (issue #14). On the real engine and a tiny SD1.5 model."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_api import decode, pixels  # tests/serve/test_api.py

from animegen.generate import GenerationRequest, Generator
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

BASE = {"prompt": "1girl, solo", "sampler": "Euler", "steps": 4, "cfg_scale": 5, "seed": 11, "width": 64, "height": 64}


def set_at_step(event: threading.Event, step: int):
    def progress(done: int, total: int) -> None:
        if done == step:
            event.set()
    return progress


@pytest.fixture(scope="module")
def engine(tiny_sd15_dir):
    return Generator(tiny_sd15_dir, device="cpu")


def test_skip_decodes_the_current_batch_early_and_runs_the_next(engine, one_torch_thread):
    full = engine(GenerationRequest(**BASE, n=2, batch_size=1))
    stop = threading.Event()  # the reference: A1111 returns the last denoised prediction on interrupt and skip alike
    interrupted = engine(GenerationRequest(**BASE, n=1), progress=set_at_step(stop, 1), interrupt=stop)
    skip = threading.Event()
    steps: list[int] = []

    def progress(done: int, total: int) -> None:
        steps.append(done)
        if done == 1:
            skip.set()

    skipped = engine(GenerationRequest(**BASE, n=2, batch_size=1), progress=progress, skip=skip)
    assert len(skipped) == 2
    assert np.array_equal(pixels(skipped[0].image), pixels(interrupted[0].image))
    assert not np.array_equal(pixels(skipped[0].image), pixels(full[0].image))
    assert np.array_equal(pixels(skipped[1].image), pixels(full[1].image))
    assert skipped[1].infotext == full[1].infotext
    assert not skip.is_set()  # A1111 clears state.skipped when the next batch starts
    assert steps[-1] == 8  # the skipped pass counts as done, so progress still ends at the total


def test_a_skip_before_a_batch_starts_is_forgotten(engine, one_torch_thread):
    skip = threading.Event()
    skip.set()  # asked while nothing was sampling
    images = engine(GenerationRequest(**BASE, n=1), skip=skip)
    assert np.array_equal(pixels(images[0].image), pixels(engine(GenerationRequest(**BASE, n=1))[0].image))


def test_a_skipped_first_pass_still_gets_the_hires_size_and_the_next_batch_its_hires_pass(engine, one_torch_thread):
    hires = {**BASE, "hires": True, "hires_scale": 2.0, "hires_steps": 2, "hires_denoise": 0.5}
    full = engine(GenerationRequest(**hires, n=2, batch_size=1))
    skip = threading.Event()
    skipped = engine(GenerationRequest(**hires, n=2, batch_size=1), progress=set_at_step(skip, 1), skip=skip)
    # A1111: the skipped image's hires pass stops at once and returns its upscaled start, at the hires size
    assert [im.image.size for im in skipped] == [(128, 128), (128, 128)]
    assert not np.array_equal(pixels(skipped[0].image), pixels(full[0].image))
    assert np.array_equal(pixels(skipped[1].image), pixels(full[1].image))


def test_the_skip_route_skips_the_running_image_of_a_real_job(serve_dirs, one_torch_thread):
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), ui=False)
    body = {"prompt": "1girl", "seed": 5, "n_iter": 2, "width": 64, "height": 64, "steps": 30, "sampler_name": "Euler"}
    with TestClient(create_app(config)) as client:
        reference = client.post("/sdapi/v1/txt2img", json=body).json()["images"]
        box = {}
        worker = threading.Thread(target=lambda: box.setdefault("r", client.post("/sdapi/v1/txt2img", json=body)))
        worker.start()
        deadline = time.time() + 60
        while not 1 <= client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] <= 20:
            assert time.time() < deadline
            time.sleep(0.002)
        assert client.post("/sdapi/v1/skip").status_code == 200
        worker.join(60)
    response = box["r"]
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2 and json.loads(response.json()["info"])["interrupted"] is False
    assert not np.array_equal(pixels(decode(images[0])), pixels(decode(reference[0])))
    assert np.array_equal(pixels(decode(images[1])), pixels(decode(reference[1])))
