"""NV noise: Philox4x32-10 and CUDA's Box-Muller, checked against references written independently of
`generate/rng.py`:

- an implementation in plain Python ints of the Philox4x32 round from the Random123 paper (Salmon, Moraes,
  Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011) with its constants, and curand's
  documented `_curand_box_muller` (u = x·2⁻³² + 2⁻³³, v = y·2π·2⁻³² + π·2⁻³², n = √(−2 ln u)·sin v);
- the known-answer vectors of the Random123 distribution (kat_vectors, as cut-and-pasted into
  DEShawResearch/Random123-Boost libs/random/test/test_philox.cpp);
- published values of CUDA `torch.randn` itself: A1111's `modules/rng_philox.py` docstring (seed 0, shape 3x4)
  and a run of kapilsh/cuda-mode-lecture (commit 7e512fc, kernels/triton_fused_add_mul_relu.py `get_inputs`:
  `torch.manual_seed(0)`, then `torch.randn((8, 8))`, `torch.randn((8, 8))`, `torch.randn((1, 8))` on
  cuda, float32), whose printed output is in FusedKernels.ipynb of the same commit.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from animegen.generate.rng import ImageRNG, PhiloxGenerator, philox4x32_10

M0, M1 = 0xD2511F53, 0xCD9E8D57  # Random123 multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
MASK = 0xFFFFFFFF


def philox_reference(counter, key, rounds=10):
    """Random123's Philox4x32: per round, two 32x32->64 products, the words permuted and xored with the key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return c0, c1, c2, c3


def cuda_randn_reference(seed: int, call: int, index: int) -> float:
    """Element `index` of the `call`-th torch.randn of a CUDA generator seeded `seed` (small tensors):
    torch's kernel gives thread `index` curand_init(seed, subsequence=index, offset=4*call), whose Philox
    counter is (call, 0, index, 0) and key (seed low, seed high); the element is curand_normal4's .x.
    Box-Muller in float64 rounded to float32, as A1111's NV computes it."""
    x, y, _, _ = philox_reference((call & MASK, call >> 32, index & MASK, index >> 32), (seed & MASK, seed >> 32))
    two_pow32_inv = float(np.float32(2.3283064e-10))  # CURAND_2POW32_INV
    two_pow32_inv_2pi = float(np.float32(2.3283064e-10 * 6.2831855))  # CURAND_2POW32_INV_2PI
    u = x * two_pow32_inv + two_pow32_inv / 2
    v = y * two_pow32_inv_2pi + two_pow32_inv_2pi / 2
    return float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v)))


# Random123 kat_vectors, philox4x32 10 rounds: counter words, key words, expected output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK,) * 4, (MASK,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_matches_the_random123_known_answers(counter, key, expected):
    assert philox_reference(counter, key) == expected  # the test's own reference is right...
    got = philox4x32_10(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    assert tuple(int(w) for w in got[:, 0]) == expected  # ...and so is the module's


def test_vectorised_philox_equals_the_reference_on_random_counters_and_keys():
    rnd = random.Random(13)
    counters = [[rnd.getrandbits(32) for _ in range(4)] for _ in range(300)]
    keys = [[rnd.getrandbits(32) for _ in range(2)] for _ in range(300)]
    got = philox4x32_10(np.array(counters, dtype=np.uint32).T, np.array(keys, dtype=np.uint32).T)
    want = np.array([philox_reference(c, k) for c, k in zip(counters, keys)], dtype=np.uint32).T
    assert np.array_equal(got, want)


def test_nv_normals_equal_the_reference_element_by_element():
    for seed in (0, 1, 31337, 2**32 - 1, 2**32 + 7):
        g = PhiloxGenerator(seed)
        for call in range(3):
            got = g.randn((4, 16, 16)).numpy().ravel()  # C order: element i is thread i
            idx = [0, 1, 2, 255, 511, 1023] + random.Random(seed + call).sample(range(1024), 20)
            want = np.array([cuda_randn_reference(seed, call, i) for i in idx], dtype=np.float32)
            np.testing.assert_array_max_ulp(got[idx], want, maxulp=1)


# A1111 modules/rng_philox.py docstring: the "expected output" of Generator(seed=0).randn(shape=(3, 4)), the
# module being an "RNG that produces same outputs as torch.randn(..., device='cuda') on CPU". They are 2-6 float32
# ulps from what its own float64 Box-Muller computes (and ours): CUDA's float32 `__sincosf`/`logf` values.
A1111_SEED0_3X4 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                   [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                   [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]

# kapilsh/cuda-mode-lecture FusedKernels.ipynb @7e512fc: print of the first torch.randn((8, 8), device='cuda').
CUDA_SEED0_8X8 = [
    [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
    [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
    [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
    [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
    [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
    [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
    [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
    [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
]
# ...and of max(first + 0.5 * second + third, 0), second = randn((8, 8)), third = randn((1, 8)), same generator.
CUDA_SEED0_RELU = [
    [1.7098e+00, 0, 0, 0, 6.7049e-01, 0, 3.4424e-01, 1.1223e-02],
    [1.8750e+00, 0, 0, 2.2105e+00, 6.6808e-01, 0, 1.8445e+00, 1.9246e+00],
    [2.2614e+00, 1.3964e+00, 5.1802e-01, 2.0114e+00, 0, 0, 2.7715e-01, 0],
    [2.4750e+00, 0, 1.9079e+00, 5.4869e-01, 3.7923e-01, 0, 3.1791e+00, 6.6843e-01],
    [1.8234e+00, 0, 1.1147e-01, 0, 0, 0, 2.4250e+00, 3.2593e+00],
    [2.2903e+00, 0, 1.1721e+00, 6.9331e-01, 1.0583e+00, 6.7518e-01, 0, 2.6185e-01],
    [1.5804e+00, 0, 9.0740e-01, 1.6670e-01, 5.5230e-02, 0, 1.5325e+00, 3.5984e-01],
    [1.5554e+00, 0, 0, 9.4380e-01, 2.9795e-03, 7.4125e-02, 1.6286e+00, 0],
]


def test_nv_gives_the_published_cuda_values_for_seed_0():
    np.testing.assert_allclose(PhiloxGenerator(0).randn((3, 4)).numpy(), A1111_SEED0_3X4, rtol=0, atol=1e-6)
    g = PhiloxGenerator(0)
    first, second, third = g.randn((8, 8)).numpy(), g.randn((8, 8)).numpy(), g.randn((1, 8)).numpy()
    np.testing.assert_allclose(first, CUDA_SEED0_8X8, rtol=0, atol=5.1e-5)  # printed to 4 decimals
    relu = first + 0.5 * second + third
    printed = np.array(CUDA_SEED0_RELU)
    positive = printed > 0
    np.testing.assert_allclose(relu[positive], printed[positive], rtol=5.1e-5, atol=1e-6)  # 5 significant digits
    assert (relu[~positive] <= 1e-6).all()  # printed as 0: the sum was clamped


def test_an_image_rng_draws_the_cuda_sequence_first_then_next():
    rng = ImageRNG([0], source="NV")
    np.testing.assert_allclose(rng.first_noise((1, 8, 8))[0].numpy(), CUDA_SEED0_8X8, rtol=0, atol=5.1e-5)
    second = rng.next_noise()[0].numpy()
    g = PhiloxGenerator(0)
    g.randn((8, 8))
    assert np.array_equal(second, g.randn((8, 8)).numpy())  # the same generator, one call further


def test_the_generator_state_is_seed_and_call_count_only():
    g = PhiloxGenerator(42)
    a = g.randn((2, 3)).numpy()
    b = g.randn((5,)).numpy()
    assert g.offset == 2
    assert np.array_equal(PhiloxGenerator(42).randn((6,)).numpy(), a.ravel())  # a call's shape only cuts it
    again = PhiloxGenerator(42, offset=1)
    assert np.array_equal(again.randn((5,)).numpy(), b)
