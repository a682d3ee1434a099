"""`ImageRNG`: one generator per image as A1111 1.10's `modules/rng.py` draws noise, for each source.

The references are A1111's own definitions, written here with torch's global generator and with the
Philox reference of test_rng_philox: CPU noise is `torch.manual_seed(seed); torch.randn(shape)` and
later draws continue that generator; ENSD re-seeds each image's generator with seed + ENSD after the
first draw; the variation seed slerps the first noise towards the subseed's first draw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rng_philox import cuda_randn_reference

from animegen.core.errors import AnimegenError
from animegen.generate.rng import SOURCES, ImageRNG, randn_local, rng_source

SHAPE = (4, 8, 8)


def a1111_cpu(seed: int, draws: int) -> list[torch.Tensor]:
    """A1111 CPU: `randn(seed, shape)` seeds torch's global generator; later draws continue it."""
    torch.manual_seed(seed)
    return [torch.randn(SHAPE) for _ in range(draws)]


def nv_reference(seed: int, call: int) -> np.ndarray:
    n = int(np.prod(SHAPE))
    return np.array([cuda_randn_reference(seed, call, i) for i in range(n)], dtype=np.float32).reshape(SHAPE)


def test_cpu_noise_is_the_seeded_torch_generator_and_ancestral_noise_continues_it():
    rng = ImageRNG([5, 6], source="CPU")
    first, second, third = rng.first_noise((2, *SHAPE)), rng.next_noise(), rng.next_noise()
    for k, seed in enumerate((5, 6)):
        want = a1111_cpu(seed, 3)
        for got, expected in zip((first, second, third), want):
            assert torch.equal(got[k], expected)


@pytest.mark.parametrize("source", ["CPU", "NV", "GPU"])
def test_image_k_of_a_batch_is_image_k_generated_alone(source):
    batch = ImageRNG([10, 11, 12], source=source)
    together = [batch.first_noise((3, *SHAPE)), batch.next_noise()]
    alone = ImageRNG([11], source=source)
    single = [alone.first_noise((1, *SHAPE)), alone.next_noise()]
    for t, s in zip(together, single):
        assert torch.equal(t[1], s[0])
    assert not torch.equal(together[0][0], together[0][1])  # different seeds, different noise


def test_ensd_reseeds_only_the_ancestral_noise():
    seed, ensd = 7, 31337
    plain = ImageRNG([seed], source="CPU")
    delta = ImageRNG([seed], source="CPU", eta_noise_seed_delta=ensd)
    assert torch.equal(plain.first_noise((1, *SHAPE)), delta.first_noise((1, *SHAPE)))
    assert torch.equal(plain.next_noise()[0], a1111_cpu(seed, 2)[1])  # ENSD 0: the same generator goes on
    later = a1111_cpu(seed + ensd, 2)
    assert torch.equal(delta.next_noise()[0], later[0])  # a fresh generator seeded seed + ENSD ...
    assert torch.equal(delta.next_noise()[0], later[1])  # ... that then goes on


def test_ensd_with_nv_noise():
    rng = ImageRNG([3], source="NV", eta_noise_seed_delta=31337)
    np.testing.assert_array_max_ulp(rng.first_noise((1, *SHAPE))[0].numpy(), nv_reference(3, 0), maxulp=1)
    np.testing.assert_array_max_ulp(rng.next_noise()[0].numpy(), nv_reference(3 + 31337, 0), maxulp=1)
    np.testing.assert_array_max_ulp(rng.next_noise()[0].numpy(), nv_reference(3 + 31337, 1), maxulp=1)


def test_gpu_noise_off_cuda_is_nv():
    gpu, nv = ImageRNG([9], source="GPU", device="cpu"), ImageRNG([9], source="NV")
    assert gpu.kind == "NV"
    assert torch.equal(gpu.first_noise((1, *SHAPE)), nv.first_noise((1, *SHAPE)))
    assert torch.equal(gpu.next_noise(), nv.next_noise())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_noise_on_cuda_is_torch_randn_on_cuda_and_nv_agrees():
    rng = ImageRNG([9], source="GPU", device="cuda")
    assert rng.kind == "CUDA"
    generator = torch.Generator("cuda").manual_seed(9)
    first = rng.first_noise((1, *SHAPE))[0]
    assert torch.equal(first, torch.randn(SHAPE, device="cuda", generator=generator))
    assert torch.equal(rng.next_noise()[0], torch.randn(SHAPE, device="cuda", generator=generator))
    nv = ImageRNG([9], source="NV").first_noise((1, *SHAPE))[0]
    assert (first.cpu() - nv).abs().max() < 1e-5


def slerp_reference(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Spherical interpolation of each (channel, column) vector over the rows, as A1111's `slerp` normalises
    an image's (C, H, W) noise along dim 1."""
    out = np.empty_like(low, dtype=np.float64)
    channels, _, columns = low.shape
    for c in range(channels):
        for w in range(columns):
            a, b = low[c, :, w].astype(np.float64), high[c, :, w].astype(np.float64)
            omega = np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            out[c, :, w] = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return out


def test_a_variation_seed_slerps_the_first_noise_towards_the_subseed():
    rng = ImageRNG([20, 21], source="CPU", subseeds=[99], subseed_strength=0.3)
    first = rng.first_noise((2, *SHAPE))
    base = [a1111_cpu(20, 1)[0], a1111_cpu(21, 1)[0]]
    # A1111: an image past the end of the subseed list uses subseed 0
    for k, sub in enumerate((99, 0)):
        want = slerp_reference(0.3, base[k].numpy(), a1111_cpu(sub, 1)[0].numpy())
        np.testing.assert_allclose(first[k].numpy(), want, rtol=0, atol=1e-5)
    assert torch.equal(rng.next_noise()[0], a1111_cpu(20, 2)[1])  # ancestral noise is the seed's own
    untouched = ImageRNG([20], source="CPU", subseeds=[99], subseed_strength=0.0)
    assert torch.equal(untouched.first_noise((1, *SHAPE))[0], base[0])


def test_randn_local_is_a_fresh_generators_first_draw():
    assert torch.equal(randn_local(4, SHAPE, "CPU"), a1111_cpu(4, 1)[0])
    np.testing.assert_array_max_ulp(randn_local(4, SHAPE, "NV").numpy(), nv_reference(4, 0), maxulp=1)
    assert torch.equal(randn_local(4, SHAPE, "GPU"), randn_local(4, SHAPE, "NV"))  # no CUDA device here


def test_the_noise_sampler_is_the_next_draw():
    rng, twin = ImageRNG([1], source="NV"), ImageRNG([1], source="NV")
    rng.first_noise((1, *SHAPE)), twin.first_noise((1, *SHAPE))
    assert torch.equal(rng.noise_sampler(torch.tensor(1.0), torch.tensor(0.5)), twin.next_noise())


def test_noise_is_float32_on_the_asked_device():
    noise = ImageRNG([1], source="NV", device="cpu").first_noise((1, *SHAPE))
    assert noise.dtype == torch.float32 and noise.device.type == "cpu" and noise.shape == (1, *SHAPE)


def test_source_names_and_misuse():
    assert SOURCES == ("GPU", "CPU", "NV")
    assert [rng_source(s) for s in ("gpu", "Cpu", "NV")] == ["GPU", "CPU", "NV"]
    with pytest.raises(AnimegenError, match="GPU.*CPU.*NV"):
        rng_source("TPU")
    rng = ImageRNG([1, 2], source="CPU")
    with pytest.raises(RuntimeError, match="first_noise"):
        rng.next_noise()
    with pytest.raises(ValueError, match="2 seeds"):
        rng.first_noise((3, *SHAPE))
    rng.first_noise((2, *SHAPE))
    with pytest.raises(RuntimeError, match="new ImageRNG"):
        rng.first_noise((2, *SHAPE))
