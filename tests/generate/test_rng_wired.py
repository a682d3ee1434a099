"""The request's noise source and ENSD reach every draw the engine makes, as A1111 1.10 draws them.

References (written from A1111's `modules/rng.py`, `sd_samplers_common.replace_torchsde_browinan` and
`processing.create_infotext`, independently of `generate/rng.py`): each image has one generator seeded with its
seed whose first draw is the starting noise and whose later draws are the ancestral noise; "CPU" is torch's CPU
generator, "NV" (and "GPU" off CUDA) CUDA's Philox normals (`test_rng_philox.cuda_randn_reference`); ENSD
re-seeds each generator with seed + ENSD right after the first draw; the SDE samplers' Brownian trees draw their
normals from a fresh generator of the same source per tree node. The sampling itself is `a1111_reference`.
"""

from __future__ import annotations

import math

import a1111_reference as ref
import numpy as np
import pytest
import torch
from pipeline_reference import a1111_images
from test_rng_philox import cuda_randn_reference

from animegen.generate import GenerationRequest
from animegen.generate.infotext import parse_infotext

SIZE = {"width": 64, "height": 64}
TOL = 1e-4  # float32 engine vs float64 reference on the tiny UNet (the engine tests' tolerance)


def nv_reference(seed: int, call: int, shape) -> torch.Tensor:
    n = math.prod(shape)
    return torch.tensor([cuda_randn_reference(seed, call, i) for i in range(n)], dtype=torch.float32).reshape(shape)


class A1111Noise:
    """`ImageRNG` as A1111 defines it: one generator per image; ENSD re-seeds them after the first draw."""

    def __init__(self, seeds, shape, *, source="CPU", ensd=0):
        self.seeds, self.shape, self.source, self.ensd = list(seeds), tuple(shape), source, ensd
        self.generators = [self._generator(s) for s in self.seeds]
        self.first = True

    def _generator(self, seed):
        return torch.Generator().manual_seed(seed) if self.source == "CPU" else [seed, 0]  # NV: seed, call count

    def _draw(self, g):
        if self.source == "CPU":
            return torch.randn(self.shape, generator=g)
        out = nv_reference(g[0], g[1], self.shape)
        g[1] += 1
        return out

    def __call__(self, *_):
        out = torch.stack([self._draw(g) for g in self.generators]).to(torch.float64)
        if self.first and self.ensd:
            self.generators = [self._generator(s + self.ensd) for s in self.seeds]
        self.first = False
        return out


@pytest.fixture(scope="module")
def sd15(sd15_engine):
    return sd15_engine


def reference(monkeypatch, pipe, sampler, *, source, ensd=0, **extra):
    monkeypatch.setattr(ref, "Noise", lambda seeds, shape: A1111Noise(seeds, shape, source=source, ensd=ensd))
    if source == "NV":  # A1111 hands torchsde `randn_local(seed, size)` of the chosen source
        from torchsde._brownian import brownian_interval

        monkeypatch.setattr(brownian_interval, "_randn",
                            lambda size, dtype, device, seed: nv_reference(int(seed), 0, size).to(dtype))
    image, _ = a1111_images(pipe, sampler, "1girl, smile", "lowres", 3, 6.0, 321, **SIZE, **extra)
    monkeypatch.undo()
    return image


def run(gen, sampler, steps=3, **fields):
    return gen(GenerationRequest("1girl, smile", negative_prompt="lowres", sampler=sampler, steps=steps,
                                 cfg_scale=6.0, seed=321, **SIZE, **fields))[0]


@pytest.mark.parametrize("source", ["CPU", "NV"])
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
def test_txt2img_noise_comes_from_the_requested_source(sd15, ref_pipe, monkeypatch, one_torch_thread, source,
                                                        sampler):
    ours = run(sd15, sampler, rng=source)
    want = reference(monkeypatch, ref_pipe, sampler, source=source)
    assert np.abs(ours.array - want).max() <= TOL
    assert parse_infotext(ours.infotext)["RNG"] == source


def test_gpu_off_cuda_is_nv_and_is_recorded_as_gpu(sd15, one_torch_thread):
    gpu, nv = run(sd15, "Euler a", rng="GPU"), run(sd15, "Euler a", rng="NV")
    assert np.array_equal(gpu.array, nv.array)
    assert parse_infotext(gpu.infotext)["RNG"] == "GPU"
    assert np.abs(run(sd15, "Euler a", rng="CPU").array - nv.array).max() > 1e-3  # the sources do differ


def test_img2img_noise_comes_from_the_requested_source(sd15, ref_pipe, monkeypatch, one_torch_thread):
    from PIL import Image

    init = Image.new("RGB", (64, 64), (40, 160, 90))
    ours = run(sd15, "Euler a", rng="NV", init_image=init, strength=0.6)
    want = reference(monkeypatch, ref_pipe, "Euler a", source="NV", init_image=init, strength=0.6)
    assert np.abs(ours.array - want).max() <= TOL


def test_ensd_reseeds_the_ancestral_noise(sd15, ref_pipe, monkeypatch, one_torch_thread):
    ours = run(sd15, "Euler a", rng="CPU", eta_noise_seed_delta=31337)
    want = reference(monkeypatch, ref_pipe, "Euler a", source="CPU", ensd=31337)
    assert np.abs(ours.array - want).max() <= TOL
    assert parse_infotext(ours.infotext)["ENSD"] == "31337"


# Samplers whose image depends on draws after the first: A1111's `uses_ensd` ones, and Restart and LCM, which
# A1111 feeds from the same generators (its infotext omits ENSD for them; ours records it so they reproduce).
ENSD_SAMPLERS = {"Euler a", "DPM2 a", "DPM++ 2S a", "Restart", "LCM"}


@pytest.mark.parametrize("sampler", [s for s in ref.A1111_SAMPLERS])
def test_ensd_changes_only_the_samplers_that_draw_from_the_generators(sd15, one_torch_thread, sampler):
    steps = 20 if sampler == "Restart" else 3  # A1111's Restart re-noises only from 20 sigmas on
    plain = run(sd15, sampler, steps, rng="CPU")
    delta = run(sd15, sampler, steps, rng="CPU", eta_noise_seed_delta=31337)
    changed = np.abs(plain.array - delta.array).max() > 1e-5
    assert changed == (sampler in ENSD_SAMPLERS)
    assert ("ENSD" in parse_infotext(delta.infotext)) == changed
